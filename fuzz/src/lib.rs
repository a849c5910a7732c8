//! The fuzz targets' harness: [`readers`], one function per file reader of burn-ema.
pub mod readers;
