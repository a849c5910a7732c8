//! Mean teacher (Tarvainen and Valpola 2017) on MNIST with a few labelled digits: the student
//! learns from the labelled digits (cross-entropy) and from every training digit, labelled or
//! not, by matching the class probabilities of its teacher — the EMA of its own weights — on
//! another view of the same digit (shifted by up to 2 pixels, Gaussian noise; a squared-error
//! consistency cost, ramped up). The
//! teacher is an [`EmaModule`]'s shadow, its forward run inside the training step on plain
//! weights: a constant for autodiff.
//!
//! Without a teacher (`teacher_decay: None`) the same loop trains on the labelled digits only:
//! the baseline the teacher is measured against.

use burn::data::dataloader::batcher::Batcher;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::softmax;
use burn_ema::{EmaConfig, EmaModule, MovingAverage};

use crate::data::{MnistBatcher, MnistItem, load_split, shuffle, splitmix};
use crate::error::MnistError;
use crate::eval::{Evaluation, evaluate};
use crate::model::Cnn;

/// A mean-teacher run's settings.
#[derive(Clone, Debug)]
pub struct MeanTeacherSettings {
    /// Labelled digits (the same number of each class; the rest of the training split is
    /// used without labels).
    pub labels: usize,
    /// The teacher's EMA decay (0.99 in the paper's early phase); `None`: no teacher, the
    /// supervised baseline.
    pub teacher_decay: Option<f64>,
    /// The consistency cost's weight once ramped up.
    pub consistency: f64,
    /// Epochs over the unlabelled digits.
    pub epochs: usize,
    /// Unlabelled digits per step (and labelled ones: half as many).
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// The standard deviation of the Gaussian noise added to each view (normalised pixels).
    pub noise: f64,
    /// Seed of the initialisation, the split, the labelled digits' order and the noise.
    pub seed: u64,
    /// The MNIST IDX files.
    pub data_dir: std::path::PathBuf,
    /// Use the first `n` training digits only (tests).
    pub train_limit: Option<usize>,
    /// Validate on the first `n` validation digits only (tests).
    pub valid_limit: Option<usize>,
}

impl MeanTeacherSettings {
    /// 100 labels, teacher decay 0.99, consistency weight 3, 12 epochs, batches of 64, Adam at
    /// 3e-3, noise 0.5 (and shifts of up to 2 pixels).
    pub fn new(data_dir: std::path::PathBuf) -> Self {
        Self {
            labels: 100,
            teacher_decay: Some(0.99),
            consistency: 3.0,
            epochs: 12,
            batch_size: 64,
            lr: 3e-3,
            noise: 0.5,
            seed: 42,
            data_dir,
            train_limit: None,
            valid_limit: None,
        }
    }
}

/// One epoch's validation.
#[derive(Clone, Debug)]
pub struct MeanTeacherEpoch {
    /// From 1.
    pub epoch: usize,
    /// The student's (the live weights').
    pub student: Evaluation,
    /// The teacher's (the EMA's), when there is one.
    pub teacher: Option<Evaluation>,
}

/// `count` labelled digits, the same number of each class, from the front of `train`; the
/// rest of `train` is returned as it is (it is used without labels, as are these).
fn labelled(train: &[MnistItem], count: usize) -> Result<Vec<MnistItem>, MnistError> {
    if count < 10 || !count.is_multiple_of(10) {
        return Err(MnistError::Training(format!(
            "the labelled digits must be a positive multiple of 10 (as many of each class), got \
             {count}"
        )));
    }
    let per_class = count / 10;
    let mut taken = [0usize; 10];
    let picked: Vec<MnistItem> = train
        .iter()
        .filter(|item| {
            let class = item.label as usize;
            let keep = taken[class] < per_class;
            taken[class] += usize::from(keep);
            keep
        })
        .cloned()
        .collect();
    if picked.len() < count {
        return Err(MnistError::Training(format!(
            "only {} labelled digits of {count} could be drawn from {} training digits",
            picked.len(),
            train.len()
        )));
    }
    Ok(picked)
}

/// Digits shifted by up to `max` pixels each way (zeros shifted in), each its own shift: the
/// translations mean teacher's views differ by, with the Gaussian noise.
fn translated(items: &[MnistItem], max: i64, state: &mut u64) -> Vec<MnistItem> {
    let mut next = || (splitmix(state) % (2 * max as u64 + 1)) as i64 - max;
    items
        .iter()
        .map(|item| {
            let (dx, dy) = (next(), next());
            let mut pixels = vec![0u8; 28 * 28];
            for y in 0..28i64 {
                for x in 0..28i64 {
                    let (sx, sy) = (x - dx, y - dy);
                    if (0..28).contains(&sx) && (0..28).contains(&sy) {
                        pixels[(y * 28 + x) as usize] = item.pixels[(sy * 28 + sx) as usize];
                    }
                }
            }
            MnistItem {
                pixels,
                label: item.label,
            }
        })
        .collect()
}

/// The consistency weight at `progress` (0..1 of training): the paper's sigmoid ramp-up
/// `exp(−5(1 − t)²)` over the first 40%, then full.
fn ramp(progress: f64) -> f64 {
    let t = (progress / 0.4).min(1.0);
    (-5.0 * (1.0 - t) * (1.0 - t)).exp()
}

/// Trains the CNN with a mean teacher (or without one) and validates student and teacher
/// after every epoch.
pub fn train_mean_teacher(s: &MeanTeacherSettings) -> Result<Vec<MeanTeacherEpoch>, MnistError> {
    if s.epochs == 0 || s.batch_size < 2 {
        return Err(MnistError::Training(
            "epochs must be at least 1 and the batch size at least 2".into(),
        ));
    }
    let (mut train, mut valid) = load_split(&s.data_dir, s.seed)?;
    if let Some(n) = s.train_limit {
        train.truncate(n);
    }
    if let Some(n) = s.valid_limit {
        valid.truncate(n);
    }
    let labelled = labelled(&train, s.labels)?;
    let device = Device::flex();
    device.seed(s.seed);
    let autodiff = device.clone().autodiff();
    let student = Cnn::new(&autodiff);
    // The teacher: an EMA of the student; without one, a decay-0 EMA is never read.
    let config = EmaConfig::new(s.teacher_decay.unwrap_or(0.0));
    let mut pair = EmaModule::new(student, config)?;
    let mut optim = AdamConfig::new().init();
    let ce = CrossEntropyLossConfig::new().init(&autodiff);
    let steps_per_epoch = train.len().div_ceil(s.batch_size);
    let total = (steps_per_epoch * s.epochs) as f64;
    let half = (s.batch_size / 2).max(1);
    let mut step = 0usize;
    let mut shifts = s.seed ^ 0x6d65_616e; // the translations' own stream
    let mut epochs = Vec::with_capacity(s.epochs);
    for epoch in 1..=s.epochs {
        let mut unlabelled = train.clone();
        shuffle(&mut unlabelled, s.seed + epoch as u64);
        for chunk in unlabelled.chunks(s.batch_size) {
            // Labelled digits: a fresh draw of `half` from the few, cycling through them.
            let start = (step * half) % labelled.len();
            let labelled_batch: Vec<MnistItem> = (0..half)
                .map(|i| labelled[(start + i) % labelled.len()].clone())
                .collect();
            let sup = MnistBatcher.batch(translated(&labelled_batch, 2, &mut shifts), &autodiff);
            let noisy = |x: Tensor<4>| {
                let noise = x.random_like(Distribution::Normal(0.0, s.noise));
                x + noise
            };
            let logits = pair.model().forward(noisy(sup.images));
            let mut loss = ce.forward(logits, sup.targets);
            if s.teacher_decay.is_some() {
                let student_view = MnistBatcher.batch(translated(chunk, 2, &mut shifts), &autodiff);
                let teacher_view = MnistBatcher.batch(translated(chunk, 2, &mut shifts), &autodiff);
                let student = softmax(pair.model().forward(noisy(student_view.images)), 1);
                // The teacher's view: its own shift and noise, its plain weights, a constant.
                let view = noisy(teacher_view.images).inner();
                let teacher = softmax(pair.shadow().forward(view), 1);
                let teacher = Tensor::<2>::from_inner(teacher);
                let consistency = (student - teacher).powi_scalar(2).sum_dim(1).mean();
                let weight = s.consistency * ramp(step as f64 / total);
                loss = loss + consistency.mul_scalar(weight);
            }
            let grads = GradientsParams::from_grads(loss.backward(), pair.model());
            let stepped = optim.step(s.lr, pair.model().clone(), grads);
            *pair.model_mut() = stepped;
            pair.update()?;
            step += 1;
        }
        let student = evaluate(pair.model(), &valid, &device);
        let teacher = s
            .teacher_decay
            .map(|_| evaluate(pair.shadow(), &valid, &device));
        epochs.push(MeanTeacherEpoch {
            epoch,
            student,
            teacher,
        });
    }
    Ok(epochs)
}

/// Draws validation accuracy per epoch: labels only, the student with its teacher, the
/// teacher.
pub fn plot(
    path: &std::path::Path,
    baseline: &[MeanTeacherEpoch],
    with_teacher: &[MeanTeacherEpoch],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let acc = |e: &Evaluation| 100.0 * e.accuracy;
    type Curve<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
    let series: [Curve; 3] = [
        (
            "labels only",
            BLUE,
            baseline
                .iter()
                .map(|e| (e.epoch as f64, acc(&e.student)))
                .collect(),
        ),
        (
            "student (with teacher)",
            GREEN,
            with_teacher
                .iter()
                .map(|e| (e.epoch as f64, acc(&e.student)))
                .collect(),
        ),
        (
            "teacher (EMA)",
            RED,
            with_teacher
                .iter()
                .filter_map(|e| e.teacher.as_ref().map(|t| (e.epoch as f64, acc(t))))
                .collect(),
        ),
    ];
    let values = series.iter().flat_map(|(_, _, s)| s.iter().map(|p| p.1));
    let lo = values.fold(100.0f64, f64::min);
    let last = baseline.len().max(2) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "MNIST with few labels: validation accuracy (%)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..last, (lo - 2.0).max(0.0)..100.0)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
