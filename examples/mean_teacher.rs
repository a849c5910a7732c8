//! Mean teacher on MNIST with 100 labelled digits: a student trained against its EMA teacher,
//! against the same student trained on the labels alone.
//!
//! ```text
//! cargo run --release --example mean_teacher                 # both, and the plot
//! cargo run --release --example mean_teacher -- --labels 50 --epochs 20
//! ```
//!
//! Writes `mean-teacher.csv` and `mean-teacher.svg` to `--artifacts`. The loop is in
//! `crates/burn-ema-mnist/src/mean_teacher.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ema_mnist::data::default_data_dir;
use burn_ema_mnist::mean_teacher::{MeanTeacherSettings, plot, train_mean_teacher};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Mean teacher on MNIST with a few labels: the student against its EMA teacher")]
struct Cli {
    /// Labelled digits (a multiple of 10: as many of each class).
    #[arg(long, default_value_t = 100)]
    labels: usize,
    /// The teacher's EMA decay.
    #[arg(long, default_value_t = 0.99)]
    teacher_decay: f64,
    /// The consistency cost's weight.
    #[arg(long, default_value_t = 3.0)]
    consistency: f64,
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the CSV and the plot go.
    #[arg(long, default_value = "artifacts/mean-teacher")]
    artifacts: PathBuf,
    /// The MNIST IDX files.
    #[arg(long, default_value_os_t = default_data_dir())]
    data: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut with = MeanTeacherSettings::new(cli.data.clone());
    with.labels = cli.labels;
    with.teacher_decay = Some(cli.teacher_decay);
    with.consistency = cli.consistency;
    with.epochs = cli.epochs;
    with.seed = cli.seed;
    let without = MeanTeacherSettings {
        teacher_decay: None,
        ..with.clone()
    };
    let run = |s: &MeanTeacherSettings| {
        let started = std::time::Instant::now();
        let out = train_mean_teacher(s);
        (out, started.elapsed().as_secs_f64())
    };
    let (baseline, t0) = run(&without);
    let (teacher, t1) = run(&with);
    let (baseline, teacher) = match (baseline, teacher) {
        (Ok(b), Ok(t)) => (b, t),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} labels; validation accuracy on held-out digits ({t0:.0} s without a teacher, {t1:.0} s with)",
        cli.labels
    );
    println!("epoch | labels only | student with teacher | teacher (EMA)");
    let mut csv = String::from("epoch,labels_only,student,teacher\n");
    for (b, t) in baseline.iter().zip(&teacher) {
        let teacher_acc = t.teacher.as_ref().map_or(f64::NAN, |e| e.accuracy);
        println!(
            "{:>5} | {:>10.2}% | {:>19.2}% | {:>12.2}%",
            b.epoch,
            100.0 * b.student.accuracy,
            100.0 * t.student.accuracy,
            100.0 * teacher_acc
        );
        csv += &format!(
            "{},{},{},{}\n",
            b.epoch, b.student.accuracy, t.student.accuracy, teacher_acc
        );
    }
    let written = std::fs::create_dir_all(&cli.artifacts)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            std::fs::write(cli.artifacts.join("mean-teacher.csv"), csv).map_err(|e| e.to_string())
        })
        .and_then(|_| {
            plot(&cli.artifacts.join("mean-teacher.svg"), &baseline, &teacher)
                .map_err(|e| e.to_string())
        });
    if let Err(err) = written {
        eprintln!("error: writing to {}: {err}", cli.artifacts.display());
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {0}/mean-teacher.csv and {0}/mean-teacher.svg",
        cli.artifacts.display()
    );
    ExitCode::SUCCESS
}
