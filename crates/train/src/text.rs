//! Real text for `finetune`: the `[data]` section names a labelled corpus (a directory of text
//! files, one class per file, records separated by a line such as fortune's `%`; or a JSONL or
//! CSV file with `text` and `label`), which is split into train and held-out sets (seeded,
//! stratified: every class keeps the same share in both) and tokenised once with the
//! checkpoint's `tokenizer.json` through Hugging Face's `tokenizers` (its normaliser,
//! pre-tokeniser, WordPiece model and `[CLS] … [SEP]` template; truncated and padded to
//! `seq_len`, with the attention mask the encoder and the pooling honour).

use crate::TrainError;
use crate::data::Dataset;
use kernels_ir::reference::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `[data]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The corpus: a directory (each file a class, named by the file), or a `.jsonl` / `.csv`
    /// file. None: the built-in synthetic task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// The tokenizer (`tokenizer.json`); default: the one beside `model.checkpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Directory corpora: the line that separates records (default `%`, fortune's); an empty
    /// string separates records by blank lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Only these classes (file names of a directory, label values of a file), in this order;
    /// default: every class, sorted by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// At most this many records per class (the first ones of a seeded shuffle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_class: Option<usize>,
    /// The share of each class held out for evaluation (default 0.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
}

/// A corpus read and tokenised: the two splits and the class names (label `i` is
/// `classes[i]`).
#[derive(Clone, Debug)]
pub struct TextData {
    /// Training samples.
    pub train: Dataset,
    /// Held-out samples.
    pub eval: Dataset,
    /// Class names, by label.
    pub classes: Vec<String>,
    /// The tokenizer file used.
    pub tokenizer: PathBuf,
    /// Records longer than `seq_len` tokens (cut), over both splits.
    pub truncated: usize,
}

fn data_error(problem: String, fix: &'static str) -> TrainError {
    TrainError::Config {
        module: "data",
        problem,
        fix,
    }
}

impl DataConfig {
    /// Whether a corpus is named (else the built-in task).
    pub fn is_text(&self) -> bool {
        self.source.is_some()
    }

    /// The held-out share.
    pub fn eval_share(&self) -> f64 {
        self.eval_fraction.unwrap_or(0.2)
    }

    /// Every value is in range.
    pub fn check(&self) -> Result<(), TrainError> {
        let f = self.eval_share();
        if !(f.is_finite() && f > 0.0 && f < 1.0) {
            return Err(data_error(
                format!("data.eval_fraction = {f}"),
                "the held-out share must lie strictly between 0 and 1 (0.2 is usual)",
            ));
        }
        if let Some(n) = self.max_per_class.filter(|&n| n < 2) {
            return Err(data_error(
                format!("data.max_per_class = {n}"),
                "keep at least 2 records per class (one to train on, one to hold out), or drop the key",
            ));
        }
        if let Some(c) = &self.classes {
            if c.len() < 2 {
                return Err(data_error(
                    format!("data.classes lists {} class(es)", c.len()),
                    "a classification task needs at least 2 classes",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(d) = c.iter().find(|c| !seen.insert(c.as_str())) {
                return Err(data_error(
                    format!("data.classes lists `{d}` twice"),
                    "list each class once",
                ));
            }
        }
        Ok(())
    }

    /// The tokenizer file: `data.tokenizer`, else `tokenizer.json` beside the checkpoint.
    pub fn tokenizer_path(&self, checkpoint: Option<&Path>) -> Result<PathBuf, TrainError> {
        if let Some(t) = &self.tokenizer {
            return Ok(t.clone());
        }
        let beside = checkpoint
            .and_then(Path::parent)
            .map(|d| d.join("tokenizer.json"));
        match beside {
            Some(p) if p.is_file() => Ok(p),
            Some(p) => Err(data_error(
                format!("no tokenizer: `{}` does not exist", p.display()),
                "set data.tokenizer to the checkpoint's tokenizer.json",
            )),
            None => Err(data_error(
                "a text corpus needs a tokenizer, and neither data.tokenizer nor model.checkpoint is set".into(),
                "set data.tokenizer to a Hugging Face tokenizer.json (and model.checkpoint to the model it belongs to)",
            )),
        }
    }
}

/// The labelled records of the corpus at `source` (text, class name), in file order.
pub fn read_records(cfg: &DataConfig, source: &Path) -> Result<Vec<(String, String)>, TrainError> {
    let io = |path: &Path, e: std::io::Error| TrainError::Io {
        path: path.to_path_buf(),
        what: "read the data",
        source: e,
    };
    let meta = std::fs::metadata(source).map_err(|e| io(source, e))?;
    if meta.is_dir() {
        let sep = cfg.separator.clone().unwrap_or_else(|| "%".into());
        let names: Vec<String> = match &cfg.classes {
            Some(c) => c.clone(),
            None => {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(source).map_err(|e| io(source, e))? {
                    let entry = entry.map_err(|e| io(source, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    // Regular files only: fortune's `.u8` names are symlinks to the same
                    // files and its `.dat` files are binary indexes.
                    let kind = entry.file_type().map_err(|e| io(&entry.path(), e))?;
                    if kind.is_file() && !name.starts_with('.') && !name.ends_with(".dat") {
                        names.push(name);
                    }
                }
                names.sort();
                names
            }
        };
        let mut records = Vec::new();
        for name in names {
            let path = source.join(&name);
            let bytes = std::fs::read(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    data_error(
                        format!("class `{name}`: no file `{}`", path.display()),
                        "data.classes names files of the data directory",
                    )
                } else {
                    io(&path, e)
                }
            })?;
            let text = String::from_utf8_lossy(&bytes);
            for r in split_records(&text, &sep) {
                records.push((r, name.clone()));
            }
        }
        return Ok(records);
    }
    let text = std::fs::read_to_string(source).map_err(|e| io(source, e))?;
    // A byte-order mark (spreadsheets write one) is not part of the first field.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let ext = source
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let records = match ext.as_deref() {
        Some("jsonl") => read_jsonl(text, source)?,
        Some("csv") => read_csv(text, source)?,
        _ => {
            return Err(data_error(
                format!(
                    "data.source `{}` is neither a directory nor a .jsonl / .csv file",
                    source.display()
                ),
                "name a directory of text files (one per class), a .jsonl file (one JSON object with `text` and `label` per line) or a .csv file with `text` and `label` columns",
            ));
        }
    };
    Ok(match &cfg.classes {
        Some(keep) => records
            .into_iter()
            .filter(|(_, l)| keep.contains(l))
            .collect(),
        None => records,
    })
}

/// The records of `text`: blocks between separator lines (or blank lines when `sep` is
/// empty), trimmed; empty ones dropped.
pub fn split_records(text: &str, sep: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut flush = |cur: &mut String| {
        let t = cur.trim();
        if !t.is_empty() {
            out.push(t.to_string());
        }
        cur.clear();
    };
    for line in text.lines() {
        let boundary = if sep.is_empty() {
            line.trim().is_empty()
        } else {
            line.trim_end() == sep
        };
        if boundary {
            flush(&mut cur);
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    flush(&mut cur);
    out
}

fn label_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read_jsonl(text: &str, path: &Path) -> Result<Vec<(String, String)>, TrainError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| {
            data_error(
                format!("{}:{}: {what}", path.display(), i + 1),
                "each line must be a JSON object with a string `text` and a string or number `label`",
            )
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let text = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("no string `text`".into()))?;
        let label = v
            .get("label")
            .and_then(label_string)
            .ok_or_else(|| bad("no `label`".into()))?;
        out.push((text.to_string(), label));
    }
    Ok(out)
}

/// RFC 4180 fields: commas, double quotes around a field, `""` inside one, newlines inside
/// quotes.
fn csv_rows(text: &str) -> Result<Vec<Vec<String>>, usize> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut line) = (false, 1);
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c)
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                line += 1;
                any = false;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(line);
    }
    if any {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

fn read_csv(text: &str, path: &Path) -> Result<Vec<(String, String)>, TrainError> {
    let fix = "the first row must name the columns, two of them `text` and `label`";
    let rows = csv_rows(text).map_err(|line| {
        data_error(
            format!(
                "{}: a quoted field opened by line {line} never closes",
                path.display()
            ),
            fix,
        )
    })?;
    let mut rows = rows
        .into_iter()
        .filter(|r| !(r.len() == 1 && r[0].is_empty()));
    let header = rows.next().unwrap_or_default();
    let col = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            data_error(
                format!("{}: no `{name}` column in {header:?}", path.display()),
                fix,
            )
        })
    };
    let (t, l) = (col("text")?, col("label")?);
    let mut out = Vec::new();
    for (i, r) in rows.enumerate() {
        match (r.get(t), r.get(l)) {
            (Some(text), Some(label)) => out.push((text.clone(), label.trim().to_string())),
            _ => {
                return Err(data_error(
                    format!(
                        "{}: data row {} has {} fields",
                        path.display(),
                        i + 1,
                        r.len()
                    ),
                    fix,
                ));
            }
        }
    }
    Ok(out)
}

/// The split: per class (in `classes` order), the records shuffled by `seed`, capped at
/// `max_per_class`, and the first `round(share·n)` (at least 1, at most n − 1) held out.
/// Returns (train indices, eval indices) into `labels`, each sorted by class then shuffle.
pub fn stratified_split(
    labels: &[usize],
    classes: usize,
    share: f64,
    max_per_class: Option<usize>,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = SplitMix64::new(seed ^ 0x5EED_DA7A);
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for c in 0..classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.below(i + 1));
        }
        idx.truncate(max_per_class.unwrap_or(usize::MAX));
        let n = idx.len();
        let held = ((share * n as f64).round() as usize).clamp(1, n.saturating_sub(1));
        eval.extend_from_slice(&idx[..held.min(n)]);
        train.extend_from_slice(&idx[held.min(n)..]);
    }
    (train, eval)
}

/// Reads, splits and tokenises the corpus `cfg` names, for sequences of `seq_len` tokens over
/// a vocabulary of `vocab` ids; `checkpoint` locates the default tokenizer.
pub fn load(
    cfg: &DataConfig,
    seq_len: usize,
    vocab: usize,
    checkpoint: Option<&Path>,
    seed: u64,
) -> Result<TextData, TrainError> {
    cfg.check()?;
    let Some(source) = &cfg.source else {
        return Err(data_error(
            "no data.source".into(),
            "name a corpus in data.source",
        ));
    };
    let tok_path = cfg.tokenizer_path(checkpoint)?;
    let records = read_records(cfg, source)?;
    // Class ids: data.classes' order, else sorted names.
    let classes: Vec<String> = match &cfg.classes {
        Some(c) => c.clone(),
        None => {
            let set: std::collections::BTreeSet<&String> = records.iter().map(|(_, l)| l).collect();
            set.into_iter().cloned().collect()
        }
    };
    let id: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut counts = vec![0usize; classes.len()];
    let labels: Vec<usize> = records
        .iter()
        .map(|(_, l)| {
            let i = id[l.as_str()];
            counts[i] += 1;
            i
        })
        .collect();
    if classes.len() < 2 {
        return Err(data_error(
            format!("`{}` holds {} class(es)", source.display(), classes.len()),
            "a classification task needs at least 2 classes",
        ));
    }
    if let Some(c) = counts.iter().position(|&n| n < 2) {
        return Err(data_error(
            format!(
                "class `{}` has {} record(s) in `{}`",
                classes[c],
                counts[c],
                source.display()
            ),
            "every class needs at least 2 records (one to train on, one to hold out); drop it with data.classes",
        ));
    }
    let (train_idx, eval_idx) = stratified_split(
        &labels,
        classes.len(),
        cfg.eval_share(),
        cfg.max_per_class,
        seed,
    );
    let tok = Tokenizer::open(&tok_path, seq_len)?;
    let encode = |idx: &[usize]| -> Result<(Dataset, usize), TrainError> {
        let texts: Vec<&str> = idx.iter().map(|&i| records[i].0.as_str()).collect();
        let enc = tok.encode(&texts)?;
        if let Some(&bad) = enc.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(data_error(
                format!(
                    "the tokenizer `{}` gives id {bad}, past the model's vocabulary of {vocab}",
                    tok_path.display()
                ),
                "use the tokenizer that belongs to model.checkpoint (or raise model.vocab)",
            ));
        }
        Ok((
            Dataset {
                tokens: enc.tokens,
                labels: idx.iter().map(|&i| labels[i] as i64).collect(),
                seq_len,
                valid: enc.valid,
            },
            enc.truncated,
        ))
    };
    let (train, cut_a) = encode(&train_idx)?;
    let (eval, cut_b) = encode(&eval_idx)?;
    Ok(TextData {
        train,
        eval,
        classes,
        tokenizer: tok_path,
        truncated: cut_a + cut_b,
    })
}

/// A Hugging Face tokenizer set to truncate and pad to a fixed length.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    seq_len: usize,
}

/// Token ids of a batch of texts.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Ids, `texts × seq_len`.
    pub tokens: Vec<i64>,
    /// 1 for a real token, 0 for padding.
    pub valid: Vec<u8>,
    /// Texts that were cut to `seq_len`.
    pub truncated: usize,
}

impl Tokenizer {
    /// Reads `tokenizer.json` at `path`; encodings are truncated and padded to `seq_len` (the
    /// file's own padding token, else `[PAD]`, else id 0).
    pub fn open(path: &Path, seq_len: usize) -> Result<Self, TrainError> {
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            if !path.exists() {
                data_error(
                    format!("no tokenizer at `{}`", path.display()),
                    "set data.tokenizer to a Hugging Face tokenizer.json",
                )
            } else {
                data_error(
                    format!("`{}` is not a tokenizer.json: {e}", path.display()),
                    "give the tokenizer.json saved with the model (Hugging Face's format)",
                )
            }
        })?;
        // The template's special tokens ([CLS], [SEP]) must leave room for text: tokenizers
        // subtracts them from the length unchecked.
        let special = inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if seq_len <= special {
            return Err(data_error(
                format!(
                    "seq_len = {seq_len} cannot hold the tokenizer's {special} special tokens and any text"
                ),
                "raise model.seq_len (BERT tokenizers add [CLS] and [SEP])",
            ));
        }
        let (pad_id, pad_token) = match inner.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => match inner.token_to_id("[PAD]") {
                Some(id) => (id, "[PAD]".to_string()),
                None => (0, String::new()),
            },
        };
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: seq_len,
                ..Default::default()
            }))
            .map_err(|e| {
                data_error(
                    format!("seq_len = {seq_len} cannot hold the tokenizer's special tokens: {e}"),
                    "raise model.seq_len",
                )
            })?;
        inner.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(seq_len),
            pad_id,
            pad_token,
            ..Default::default()
        }));
        Ok(Self { inner, seq_len })
    }

    /// The ids (with the template's special tokens) and masks of `texts`.
    pub fn encode(&self, texts: &[&str]) -> Result<Encoded, TrainError> {
        let enc = self.inner.encode_batch(texts.to_vec(), true).map_err(|e| {
            data_error(
                format!("tokenising failed: {e}"),
                "check the text's encoding",
            )
        })?;
        let mut out = Encoded {
            tokens: Vec::with_capacity(texts.len() * self.seq_len),
            valid: Vec::with_capacity(texts.len() * self.seq_len),
            truncated: 0,
        };
        for (e, text) in enc.iter().zip(texts) {
            if e.get_ids().len() != self.seq_len {
                return Err(data_error(
                    format!(
                        "the tokenizer gave {} ids for {text:?}, not seq_len = {}",
                        e.get_ids().len(),
                        self.seq_len
                    ),
                    "use a tokenizer.json whose truncation and padding Hugging Face's tokenizers can set",
                ));
            }
            out.tokens.extend(e.get_ids().iter().map(|&i| i64::from(i)));
            out.valid
                .extend(e.get_attention_mask().iter().map(|&m| u8::from(m != 0)));
            if !e.get_overflowing().is_empty() {
                out.truncated += 1;
            }
        }
        Ok(out)
    }
}
