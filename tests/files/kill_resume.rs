//! Killed runs resume exactly. A training job with an `EmaModule` (checkpointed with the live
//! model every few steps) and a `PostHocEma` (snapshots, and its record checkpointed beside) runs
//! in a child process — this test binary, running the ignored test `trainer` — and is killed with
//! SIGKILL again and again, at random moments and right inside checkpoint and snapshot writes,
//! then resumed from its latest complete checkpoint. After every kill each file at its final name
//! must load; at the end the shadow, the live model, the counter and every snapshot must equal an
//! uninterrupted run's bit for bit.
//!
//! `BURN_EMA_KILLS` sets the number of kills (6 by default; `scripts/kill-resume` runs 50).
//! (A module of `tests/files.rs`, so that it links into that test binary.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn_ema::{
    EmaConfig, EmaFile, EmaModule, MovingAverage, PostHocConfig, PostHocEma, Schedule,
    shadow_from_file,
};

use crate::common::bits;

const STEPS: u64 = 48;
const CHECKPOINT_EVERY: u64 = 4;
const SNAPSHOT_EVERY: u64 = 8;

/// Big enough that a checkpoint write takes a few milliseconds (about 1 MiB per file).
#[derive(Module, Debug)]
struct Wide {
    fc1: Linear,
    fc2: Linear,
}

impl Wide {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(256, 384).init(device),
            fc2: LinearConfig::new(384, 8).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(burn::tensor::activation::relu(self.fc1.forward(x)))
    }
}

fn ema_config() -> EmaConfig {
    EmaConfig::new(0.99).with_schedule(Schedule::TensorFlow)
}

fn posthoc_config() -> PostHocConfig {
    PostHocConfig::new().with_snapshot_every(SNAPSHOT_EVERY)
}

/// The batch of step `step`, a function of the step alone (a resumed run sees the same data).
fn batch(step: u64, device: &Device) -> Tensor<2> {
    let mut state = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..16 * 256)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [16, 256]), device)
}

fn checkpoint(dir: &Path, step: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("ema-{step:04}.bpk")),
        dir.join(format!("posthoc-{step:04}.bpk")),
    )
}

/// The latest step whose two checkpoint files both exist (a kill between them leaves one).
fn latest_checkpoint(dir: &Path) -> Option<u64> {
    (1..=STEPS / CHECKPOINT_EVERY)
        .rev()
        .map(|k| k * CHECKPOINT_EVERY)
        .find(|&step| {
            let (ema, posthoc) = checkpoint(dir, step);
            ema.exists() && posthoc.exists()
        })
}

/// Scratch files of a killed writer (`<name>.<pid>-<n>.tmp`: never at a final name), which a
/// resumed job removes, as a training script would.
fn scratch_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

/// The training job: resumes from the latest checkpoint in `dir`, trains to `STEPS`, and says
/// on stdout where it is (`begin`/`done` around each write), so the harness can kill it there.
fn train_job(dir: &Path) {
    let device = Device::flex().autodiff();
    for stale in scratch_files(dir) {
        std::fs::remove_file(stale).unwrap();
    }
    let snapshots = dir.join("snapshots");
    let (mut ema, mut posthoc, start) = match latest_checkpoint(dir) {
        Some(step) => {
            let (ema_file, posthoc_file) = checkpoint(dir, step);
            let ema = EmaModule::from_file(Wide::new(&device), &ema_file).unwrap();
            let mut posthoc =
                PostHocEma::new(Wide::new(&device), posthoc_config(), &snapshots).unwrap();
            posthoc
                .load_from(&mut BurnpackStore::from_file(&posthoc_file))
                .unwrap();
            assert_eq!((ema.num_updates(), posthoc.num_updates()), (step, step));
            (ema, posthoc, step)
        }
        None => {
            device.seed(5);
            let model = Wide::new(&device);
            let posthoc = PostHocEma::new(model.clone(), posthoc_config(), &snapshots).unwrap();
            (EmaModule::new(model, ema_config()).unwrap(), posthoc, 0)
        }
    };
    println!("resumed {start}");
    let mut optim = SgdConfig::new().init();
    for step in start + 1..=STEPS {
        let loss = ema
            .model()
            .forward(batch(step, &device))
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &ema);
        ema = optim.step(0.05, ema, grads);
        ema.update().unwrap();
        *posthoc.model_mut() = ema.model().clone();
        let snapshot = step % SNAPSHOT_EVERY == 0;
        if snapshot {
            println!("snapshot {step} begin");
        }
        posthoc.update().unwrap();
        if snapshot {
            println!("snapshot {step} done");
        }
        if step % CHECKPOINT_EVERY == 0 {
            let (ema_file, posthoc_file) = checkpoint(dir, step);
            println!("checkpoint {step} begin");
            ema.save(&ema_file, EmaFile::StateWithModel).unwrap();
            posthoc
                .save_into(&mut BurnpackStore::from_file(&posthoc_file))
                .unwrap();
            println!("checkpoint {step} done");
        }
    }
    println!("finished");
}

/// The child's side: the job, in the directory the harness names.
#[test]
#[ignore = "run by `a_killed_run_resumes_bit_for_bit` in a child process"]
fn trainer() {
    let dir = std::env::var("BURN_EMA_TRAIN_DIR").expect("run by the kill/resume harness");
    train_job(Path::new(&dir));
}

/// Where a kill landed.
#[derive(Debug, Default)]
struct Kills {
    total: usize,
    in_checkpoint: usize,
    in_snapshot: usize,
    elsewhere: usize,
    /// How long each write took, `begin` to `done`, as the harness saw it (microseconds).
    write_micros: Vec<u64>,
}

/// When to kill the next child: after a random delay, or right after a `begin` line.
enum Trigger {
    After(Duration),
    AtBegin { nth: usize, delay: Duration },
}

/// Runs the job in `dir` as a child until it finishes; returns whether it did.
fn run_child(dir: &Path, trigger: Option<&Trigger>, kills: &mut Kills) -> bool {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kill_resume::trainer",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env("BURN_EMA_TRAIN_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let (mut last, mut begins, mut finished) = (String::new(), 0, false);
    let mut begin_at = Instant::now();
    let mut kill_at: Option<Instant> = match trigger {
        Some(Trigger::After(delay)) => Some(started + *delay),
        _ => None,
    };
    loop {
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            child.kill().unwrap(); // SIGKILL on Unix
            kills.total += 1;
            match last.split(' ').collect::<Vec<_>>()[..] {
                ["checkpoint", _, "begin"] => kills.in_checkpoint += 1,
                ["snapshot", _, "begin"] => kills.in_snapshot += 1,
                _ => kills.elsewhere += 1,
            }
            break;
        }
        match received.recv_timeout(Duration::from_micros(200)) {
            Ok(line) => {
                finished |= line == "finished";
                if line.ends_with(" done") {
                    kills
                        .write_micros
                        .push(begin_at.elapsed().as_micros() as u64);
                }
                if line.ends_with(" begin") {
                    begin_at = Instant::now();
                    begins += 1;
                    if let Some(Trigger::AtBegin { nth, delay }) = trigger
                        && begins == *nth
                    {
                        kill_at = Some(Instant::now() + *delay);
                    }
                }
                if line.starts_with("checkpoint") || line.starts_with("snapshot") {
                    last = line;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(
        kill_at.is_some() || status.success(),
        "the job failed on its own: {status}"
    );
    finished && status.success()
}

/// Every file at its final name loads: checkpoints, post-hoc records, snapshots.
fn assert_every_file_loads(dir: &Path) {
    let device = Device::flex();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("ema-") && name.ends_with(".bpk") {
            EmaModule::<Wide>::from_file(Wide::new(&device), &path)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("posthoc-") && name.ends_with(".bpk") {
            let mut record = PostHocEma::new(
                Wide::new(&device),
                posthoc_config(),
                std::env::temp_dir().join(format!("burn-ema-kill-probe-{}", std::process::id())),
            )
            .unwrap();
            record
                .load_from(&mut BurnpackStore::from_file(&path))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    for entry in std::fs::read_dir(dir.join("snapshots"))
        .into_iter()
        .flatten()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bpk") {
            shadow_from_file(&Wide::new(&device), &path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

/// Tensors by path, as bits.
type Bits = Vec<(String, Vec<u32>)>;

/// What a finished run left.
struct FinalState {
    num_updates: u64,
    /// The shadow's tensors, then the live model's.
    weights: Bits,
    /// Every listed snapshot's tensors.
    snapshots: Bits,
    /// The snapshot files listed, in the index's order.
    listed: Vec<String>,
}

/// What a finished run left: the final EMA state and every listed snapshot, as bits.
fn final_state(dir: &Path) -> FinalState {
    let device = Device::flex();
    let (ema_file, _) = checkpoint(dir, STEPS);
    let ema = EmaModule::from_file(Wide::new(&device), &ema_file).unwrap();
    let index = std::fs::read_to_string(dir.join("snapshots").join("index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let mut snapshots = Vec::new();
    for s in index["snapshots"].as_array().unwrap() {
        let file = s["file"].as_str().unwrap();
        let weights = shadow_from_file(&Wide::new(&device), dir.join("snapshots").join(file));
        for (path, b) in bits(&weights.unwrap()) {
            snapshots.push((format!("{file}/{path}"), b));
        }
    }
    let listed = index["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap().to_string())
        .collect();
    let mut weights = bits(ema.shadow());
    weights.extend(bits(ema.model()));
    FinalState {
        num_updates: ema.num_updates(),
        weights,
        snapshots,
        listed,
    }
}

#[test]
fn a_killed_run_resumes_bit_for_bit() {
    let kills_wanted: usize = std::env::var("BURN_EMA_KILLS")
        .map(|k| k.parse().expect("BURN_EMA_KILLS is a number"))
        .unwrap_or(6);
    let root = std::env::temp_dir().join(format!("burn-ema-kill-resume-{}", std::process::id()));
    let (clean, killed) = (root.join("clean"), root.join("killed"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::create_dir_all(&killed).unwrap();

    let mut none = Kills::default();
    let started = Instant::now();
    assert!(
        run_child(&clean, None, &mut none),
        "the uninterrupted run finishes"
    );
    let run_time = started.elapsed();
    let longest_write = none.write_micros.iter().copied().max().unwrap_or(1000);

    // Kills alternate: inside a write (a checkpoint or a snapshot `begin`, then a delay within
    // the longest write the uninterrupted run took), and at a random moment of the run. Each
    // resumed child starts over from its checkpoint.
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ kills_wanted as u64;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below.max(1)
    };
    let mut kills = Kills::default();
    let mut leftovers = 0;
    let mut attempts = 0;
    while kills.total < kills_wanted {
        attempts += 1;
        assert!(
            attempts < 4 * kills_wanted + 10,
            "too many runs finished before their kill"
        );
        let trigger = if kills.total % 2 == 0 {
            Trigger::AtBegin {
                nth: 1 + random(3) as usize,
                delay: Duration::from_micros(random(longest_write)),
            }
        } else {
            let span = run_time.as_micros() as u64;
            Trigger::After(Duration::from_micros(span / 10 + random(span)))
        };
        if run_child(&killed, Some(&trigger), &mut kills) {
            // It finished before the kill: start the run again from scratch.
            std::fs::remove_dir_all(&killed).unwrap();
            std::fs::create_dir_all(&killed).unwrap();
            continue;
        }
        leftovers += scratch_files(&killed).len() + scratch_files(&killed.join("snapshots")).len();
        assert_every_file_loads(&killed);
    }
    assert!(
        run_child(&killed, None, &mut kills),
        "the resumed run finishes"
    );
    assert_every_file_loads(&killed);

    let (want, got) = (final_state(&clean), final_state(&killed));
    assert_eq!(got.num_updates, STEPS);
    assert_eq!(got.num_updates, want.num_updates, "counter");
    assert_eq!(got.listed, want.listed, "the snapshots listed");
    assert!(
        got.weights == want.weights,
        "the shadow and the live model differ from the uninterrupted run"
    );
    assert!(
        got.snapshots == want.snapshots,
        "the snapshots differ from the uninterrupted run"
    );
    println!(
        "kill/resume: {} SIGKILLs ({} inside a checkpoint write, {} inside a snapshot write, {} \
         elsewhere; writes took up to {longest_write} us), {leftovers} scratch files left by \
         killed writes (none at a final name, removed on resume); final shadow, live model, \
         counter and {} snapshots bit-identical to an uninterrupted run",
        kills.total,
        kills.in_checkpoint,
        kills.in_snapshot,
        kills.elsewhere,
        want.listed.len()
    );
    std::fs::remove_dir_all(&root).unwrap();
}
