//! Hugging Face BERT checkpoints (safetensors) by their key names: loading into a dense
//! [`Encoder`] and exporting one. Keys may carry the `bert.` prefix (`BertForSequenceClassification`)
//! or not (`BertModel`, sentence-transformers' MiniLM); `LayerNorm.gamma/beta` of old checkpoints
//! are read as `weight/bias`; `pooler.*` and `embeddings.position_ids` are ignored; a
//! `classifier.*` head is loaded when present, else the head keeps its fresh initialisation.

use crate::TrainError;
use crate::checkpoint::{self, Tensors};
use crate::config::ModelConfig;
use crate::model::Encoder;
use crate::params::{self, Values};
use burn::tensor::backend::Backend;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The pairs (Hugging Face key, parameter path in [`Encoder`]) of a dense model of `layers`.
pub fn key_map(layers: usize) -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> = [
        ("embeddings.word_embeddings.weight", "embeddings.word"),
        (
            "embeddings.position_embeddings.weight",
            "embeddings.position",
        ),
        (
            "embeddings.token_type_embeddings.weight",
            "embeddings.token_type",
        ),
        ("embeddings.LayerNorm.weight", "embeddings.norm.weight"),
        ("embeddings.LayerNorm.bias", "embeddings.norm.bias"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for i in 0..layers {
        let hf = format!("encoder.layer.{i}");
        let ours = format!("layers.{i}");
        for (h, o) in [
            ("attention.self.query", "attention.query.Dense"),
            ("attention.self.key", "attention.key.Dense"),
            ("attention.self.value", "attention.value.Dense"),
            ("attention.output.dense", "attention.output.Dense"),
            ("attention.output.LayerNorm", "attention_norm"),
            ("intermediate.dense", "ffn.Dense.intermediate.Dense"),
            ("output.dense", "ffn.Dense.output.Dense"),
            ("output.LayerNorm", "output_norm"),
        ] {
            for t in ["weight", "bias"] {
                m.push((format!("{hf}.{h}.{t}"), format!("{ours}.{o}.{t}")));
            }
        }
    }
    m.push(("classifier.weight".into(), "head.Linear.weight".into()));
    m.push(("classifier.bias".into(), "head.Linear.bias".into()));
    m
}

/// A checkpoint's keys in the canonical spelling: no `bert.` prefix, `gamma/beta` as
/// `weight/bias`; buffers and the pooler dropped.
fn canonical(tensors: Tensors) -> Tensors {
    tensors
        .into_iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("bert.").unwrap_or(&k).to_string();
            if k.starts_with("pooler.") || k.ends_with("position_ids") {
                return None;
            }
            let k = k
                .replace("LayerNorm.gamma", "LayerNorm.weight")
                .replace("LayerNorm.beta", "LayerNorm.bias");
            Some((k, v))
        })
        .collect()
}

/// The sizes a checkpoint implies: vocab, positions, width, FFN width, layers (heads from a
/// `config.json` beside the file when there is one, else `d_model / 64`, BERT's head size).
/// `base` supplies everything else (batch, seq_len, method, classes, ...).
pub fn config_of(path: &Path, base: &ModelConfig) -> Result<ModelConfig, TrainError> {
    let (tensors, _) = checkpoint::load(path)?;
    let tensors = canonical(tensors);
    let shape = |k: &str| {
        tensors
            .get(k)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| TrainError::Checkpoint {
                path: path.to_path_buf(),
                problem: format!("no `{k}` tensor: not a BERT checkpoint"),
                fix: "give a Hugging Face BERT (or MiniLM) model.safetensors",
            })
    };
    let word = shape("embeddings.word_embeddings.weight")?;
    let pos = shape("embeddings.position_embeddings.weight")?;
    let ff = shape("encoder.layer.0.intermediate.dense.weight")?;
    let layers = (0..)
        .take_while(|i| tensors.contains_key(&format!("encoder.layer.{i}.output.dense.weight")))
        .count();
    let heads = path
        .parent()
        .map(|d| d.join("config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("num_attention_heads").and_then(|h| h.as_u64()))
        .map(|h| h as usize)
        .unwrap_or((word[1] / 64).max(1));
    let eps = path
        .parent()
        .map(|d| d.join("config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("layer_norm_eps").and_then(|h| h.as_f64()))
        .unwrap_or(base.layer_norm_eps);
    Ok(ModelConfig {
        vocab: word[0],
        max_positions: Some(pos[0]),
        d_model: word[1],
        d_ff: ff[0],
        layers,
        heads,
        layer_norm_eps: eps,
        seq_len: base.seq_len.min(pos[0]),
        ..base.clone()
    })
}

/// The dense encoder `cfg` describes with every weight from the checkpoint at `path` (a fresh
/// head from `seed` when the checkpoint has none). Missing or mis-shaped tensors are errors
/// naming them.
pub fn load<B: Backend>(
    path: &Path,
    cfg: &ModelConfig,
    seed: u64,
    device: &B::Device,
) -> Result<Encoder<B>, TrainError> {
    let (tensors, _) = checkpoint::load(path)?;
    from_tensors(canonical(tensors), cfg, seed, device).map_err(|problem| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem,
        fix: "check that [model] matches the checkpoint (or leave its sizes to the checkpoint)",
    })
}

fn from_tensors<B: Backend>(
    tensors: Tensors,
    cfg: &ModelConfig,
    seed: u64,
    device: &B::Device,
) -> Result<Encoder<B>, String> {
    let model = Encoder::<B>::init(cfg, seed, device);
    let mut by_path = BTreeMap::new();
    let mut missing = Vec::new();
    for (hf, ours) in key_map(cfg.layers) {
        match tensors.get(&hf) {
            Some(v) => {
                by_path.insert(ours, v.clone());
            }
            None if hf.starts_with("classifier.") => {}
            None => missing.push(hf),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} BERT tensors missing, first `{}`",
            missing.len(),
            missing[0]
        ));
    }
    let (model, _) = params::load(model, &by_path).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        list.join("; ")
    })?;
    Ok(model)
}

/// The model's weights under Hugging Face BERT key names (its dense equivalent: merged LoRA and
/// SaRA, exported PST, Monarch multiplied out), with a `classifier.*` head when it is linear.
pub fn export<B: Backend>(model: &Encoder<B>) -> Tensors {
    let dense = model.to_dense();
    let by_path: HashMap<String, (Vec<usize>, Values)> = params::named(&dense)
        .into_iter()
        .map(|p| (p.name, (p.shape, p.values)))
        .collect();
    key_map(dense.layers.len())
        .into_iter()
        .filter_map(|(hf, ours)| by_path.get(&ours).map(|v| (hf, v.clone())))
        .collect()
}

/// Writes [`export`] to `path` (atomically).
pub fn save<B: Backend>(model: &Encoder<B>, path: &Path) -> Result<(), TrainError> {
    checkpoint::save(path, &export(model), HashMap::new())
}
