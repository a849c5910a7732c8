#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burn_ema_fuzz::readers::safetensors(data));
