//! `--quick` end to end: a run writes the grid, the sweep plot, the results and a checkpoint;
//! a run interrupted halfway and resumed ends bit for bit where the uninterrupted one does
//! (model, EMA, snapshots, scores). One test in its own binary: Flex's random generator is
//! shared by a process's threads, and both runs seed it.

use std::path::{Path, PathBuf};

use burn_ema_edm::cli::{Cli, run};
use clap::Parser;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-ema-edm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn cli(out: &Path, extra: &[&str]) -> Cli {
    let mut args = vec!["edm", "--quick", "--post-hoc-ema", "--no-progress", "--out"];
    let out = out.to_str().unwrap();
    args.push(out);
    args.extend_from_slice(extra);
    Cli::parse_from(args)
}

fn checkpoint(out: &Path) -> PathBuf {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .expect("a checkpoint")
}

/// The tensors of every burnpack file in `dir`, by file and name, as bytes: values only (the
/// parameter ids, random for every new model, are not compared).
fn tensors_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bpk"))
        .collect();
    files.sort();
    for file in files {
        let reader = burn::store::burn_pack::Reader::from_file_exact(&file).unwrap();
        for tensor in reader.into_tensors().unwrap() {
            let name = format!(
                "{}:{}",
                file.file_name().unwrap().to_string_lossy(),
                tensor.name
            );
            out.push((name, tensor.to_bytes().unwrap().to_vec()));
        }
    }
    out.sort();
    out
}

/// Whether two runs' tensors are the same, naming the first that differs.
fn assert_same(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)], what: &str) {
    assert!(!a.is_empty(), "{what}: no tensors");
    let names = |x: &[(String, Vec<u8>)]| x.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "{what}: the same tensors");
    if let Some((x, _)) = a.iter().zip(b).find(|(x, y)| x.1 != y.1) {
        panic!("{what}: `{}` differs", x.0);
    }
}

#[test]
fn a_quick_run_writes_its_pictures_and_resumes_exactly() {
    let whole = scratch("whole");
    let report = run(&cli(&whole, &[])).unwrap();
    for file in ["samples.png", "fid_vs_sigma_rel.svg", "results.json"] {
        assert!(whole.join(file).exists(), "{file} written");
    }
    let eval = report.evaluation.as_ref().expect("scored");
    assert_eq!(eval.sweep.len(), 2);
    assert!(eval.live.fid.is_finite() && eval.ema.as_ref().unwrap().fid.is_finite());
    assert!(checkpoint(&whole).ends_with("checkpoint-00000008"));
    let png = std::fs::read(whole.join("samples.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // Interrupted after 4 of 8 steps, then resumed.
    let parts = scratch("parts");
    let first = run(&cli(&parts, &["--stop-after", "4"])).unwrap();
    assert!(
        first.evaluation.is_none(),
        "an interrupted run is not scored"
    );
    assert!(checkpoint(&parts).ends_with("checkpoint-00000004"));
    let resumed = run(&cli(&parts, &[])).unwrap();
    assert_eq!(resumed.steps_run, 4);
    let (a, b) = (report.evaluation.unwrap(), resumed.evaluation.unwrap());
    assert_eq!(a.live.fid.to_bits(), b.live.fid.to_bits(), "live FID");
    assert_eq!(
        a.ema.unwrap().fid.to_bits(),
        b.ema.unwrap().fid.to_bits(),
        "EMA FID"
    );
    for (x, y) in a.sweep.iter().zip(&b.sweep) {
        assert_eq!(
            x.fid.to_bits(),
            y.fid.to_bits(),
            "post-hoc σ_rel {:?}",
            x.sigma_rel
        );
    }
    let (a_dir, b_dir) = (checkpoint(&whole), checkpoint(&parts));
    assert_same(
        &tensors_of(&a_dir),
        &tensors_of(&b_dir),
        "final model and post-hoc EMA",
    );
    // (Adam's state is in `optimizer.bin`, keyed by parameter ids; the weights above are equal
    // after four resumed steps only if it was restored: a fresh state moves them differently.)
    assert_same(
        &tensors_of(&whole.join("snapshots")),
        &tensors_of(&parts.join("snapshots")),
        "the snapshots",
    );
    assert!(
        std::fs::read(whole.join("samples.png")).unwrap()
            == std::fs::read(parts.join("samples.png")).unwrap(),
        "the same samples"
    );
    let _ = std::fs::remove_dir_all(whole);
    let _ = std::fs::remove_dir_all(parts);
}
