//! Fine-tuning on real text: corpus readers (fortune's `%` files, JSONL, CSV), the stratified
//! split, the padding mask (a padded sequence computes what the unpadded one does), the MiniLM
//! tokenizer against Hugging Face's ids, and MiniLM fine-tuned on a slice of the fortunes corpus.
//!
//! The real-data tests need `SPARSECUBE_MINILM` (the folder `scripts/fetch-real-data.sh`
//! prints) and the fortunes corpus; without them they say why and are skipped, unless
//! `SPARSECUBE_REQUIRE_REAL_DATA` is set (CI), where that fails them.

use super::train::finetune_cpu;
use burn::tensor::{Tensor, TensorData};
use sparsecube_train::config::{ConfigFile, Method};
use sparsecube_train::finetune;
use sparsecube_train::model::Encoder;
use sparsecube_train::modules::values;
use sparsecube_train::text::{self, DataConfig, Tokenizer};
use std::path::{Path, PathBuf};

const FORTUNES: &str = "/usr/share/games/fortunes";

/// The MiniLM folder, or None (skipped) when the real data is absent and not required.
fn minilm_or_skip(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SPARSECUBE_MINILM").map(PathBuf::from);
    let have = dir
        .as_ref()
        .is_some_and(|d| d.join("model.safetensors").is_file())
        && Path::new(FORTUNES).join("computers").is_file();
    if have {
        return dir;
    }
    let why = "SPARSECUBE_MINILM (scripts/fetch-real-data.sh) or the fortunes corpus is missing";
    if std::env::var_os("SPARSECUBE_REQUIRE_REAL_DATA").is_some() {
        panic!("{test}: SPARSECUBE_REQUIRE_REAL_DATA is set but {why}");
    }
    eprintln!("{test}: skipped: {why}");
    None
}

#[test]
fn records_split_on_separator_lines_and_blank_lines() {
    let text = "first\nquote\n%\n\n  second  \n%\n%\nthird\n";
    assert_eq!(
        text::split_records(text, "%"),
        ["first\nquote", "second", "third"]
    );
    assert_eq!(
        text::split_records("a\nb\n\n\nc\n  \nd", ""),
        ["a\nb", "c", "d"]
    );
}

#[test]
fn a_directory_jsonl_and_csv_give_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(
        corpus.join("cats"),
        "Meow, said the cat.\n%\nCats sleep \"all\" day.\n",
    )
    .unwrap();
    std::fs::write(
        corpus.join("dogs"),
        "Woof.\n%\nDogs fetch,\nthen sleep.\n%\n",
    )
    .unwrap();
    // strfile's index and fortune's symlinks are not classes.
    std::fs::write(corpus.join("cats.dat"), [0u8, 1, 2, 0xff]).unwrap();
    std::os::unix::fs::symlink(corpus.join("cats"), corpus.join("cats.u8")).unwrap();
    let jsonl = dir.path().join("c.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"Meow, said the cat.\", \"label\": \"cats\"}\n\n\
         {\"text\": \"Cats sleep \\\"all\\\" day.\", \"label\": \"cats\"}\n\
         {\"text\": \"Woof.\", \"label\": \"dogs\"}\n\
         {\"text\": \"Dogs fetch,\\nthen sleep.\", \"label\": \"dogs\"}\n",
    )
    .unwrap();
    let csv = dir.path().join("c.csv");
    std::fs::write(
        &csv,
        "label,text\r\ncats,\"Meow, said the cat.\"\r\ncats,\"Cats sleep \"\"all\"\" day.\"\r\n\
         dogs,Woof.\r\ndogs,\"Dogs fetch,\nthen sleep.\"\r\n",
    )
    .unwrap();
    let read = |p: &Path| text::read_records(&DataConfig::default(), p).unwrap();
    let from_dir = read(&corpus);
    assert_eq!(from_dir.len(), 4, "{from_dir:?}");
    assert_eq!(read(&jsonl), from_dir);
    assert_eq!(read(&csv), from_dir);
    // A byte-order mark before the header (as spreadsheets save CSV) is not part of `label`.
    let bom = dir.path().join("bom.csv");
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend(std::fs::read(&csv).unwrap());
    std::fs::write(&bom, bytes).unwrap();
    assert_eq!(read(&bom), from_dir);
    // A subset of classes, and typed errors naming the problem.
    let only = DataConfig {
        classes: Some(vec!["dogs".into(), "cats".into()]),
        ..DataConfig::default()
    };
    assert_eq!(text::read_records(&only, &corpus).unwrap().len(), 4);
    let missing = DataConfig {
        classes: Some(vec!["dogs".into(), "birds".into()]),
        ..DataConfig::default()
    };
    let e = text::read_records(&missing, &corpus)
        .unwrap_err()
        .to_string();
    assert!(e.contains("birds") && e.contains("data.classes"), "{e}");
    std::fs::write(&csv, "label,text\ncats,\"never closed\n").unwrap();
    let e = text::read_records(&DataConfig::default(), &csv)
        .unwrap_err()
        .to_string();
    assert!(e.contains("never closes"), "{e}");
    std::fs::write(&csv, "label,words\ncats,x\n").unwrap();
    let e = text::read_records(&DataConfig::default(), &csv)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no `text` column"), "{e}");
    std::fs::write(&jsonl, "{\"text\": 3, \"label\": \"a\"}\n").unwrap();
    let e = text::read_records(&DataConfig::default(), &jsonl)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.jsonl:1") && e.contains("text"), "{e}");
}

#[test]
fn the_split_is_stratified_seeded_and_disjoint() {
    // Three classes of 50, 20 and 7 records.
    let labels: Vec<usize> = [(0, 50), (1, 20), (2, 7)]
        .into_iter()
        .flat_map(|(c, n)| std::iter::repeat_n(c, n))
        .collect();
    let (train, eval) = text::stratified_split(&labels, 3, 0.2, None, 7);
    let count = |idx: &[usize], c: usize| idx.iter().filter(|&&i| labels[i] == c).count();
    assert_eq!(
        [count(&eval, 0), count(&eval, 1), count(&eval, 2)],
        [10, 4, 1]
    );
    assert_eq!(train.len() + eval.len(), labels.len());
    let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), labels.len(), "train and held-out overlap");
    assert_eq!(
        text::stratified_split(&labels, 3, 0.2, None, 7),
        (train.clone(), eval.clone())
    );
    assert_ne!(text::stratified_split(&labels, 3, 0.2, None, 8).1, eval);
    let (t, e) = text::stratified_split(&labels, 3, 0.25, Some(8), 7);
    assert_eq!((t.len(), e.len()), (6 + 6 + 5, 2 + 2 + 2));
}

/// Padding a sequence with any tokens, masked, changes none of what the encoder computes for it
/// (dense attention gives padded keys no weight; pooling averages real tokens only).
#[test]
fn a_masked_padded_sequence_computes_what_the_unpadded_one_does() {
    let cfg = ConfigFile::parse(
        "[model]\nbatch = 2\nseq_len = 12\nd_model = 32\nheads = 4\nd_ff = 64\nlayers = 2\n\
         vocab = 40\nclasses = 3\nmethod = \"dense\"\n",
        "test",
    )
    .unwrap();
    let dev = Default::default();
    for method in [Method::Dense, Method::Lora, Method::Sara, Method::Monarch] {
        let model = Encoder::<sparsecube_train::Cpu>::init(&cfg.model, 3, &dev)
            .with_method(&cfg.model, method, &cfg.train.methods, 5)
            .unwrap();
        let short: Vec<i64> = vec![1, 7, 9, 30, 2, 11, 5];
        let alone = model.forward(
            Tensor::from_data(TensorData::new(short.clone(), [1, 7]), &dev),
            false,
        );
        let mut padded = short.clone();
        padded.extend([0, 39, 17, 0, 23]);
        let mut valid = vec![1.0f32; 7];
        valid.extend([0.0; 5]);
        // A second, full-length row in the same batch.
        padded.extend(10..22);
        valid.extend([1.0; 12]);
        let out = model.forward_masked(
            Tensor::from_data(TensorData::new(padded, [2, 12]), &dev),
            Some(Tensor::from_data(TensorData::new(valid, [2, 12]), &dev)),
            false,
        );
        let (a, b) = (values(&alone.logits), values(&out.logits));
        for (x, y) in a.iter().zip(&b[..a.len()]) {
            assert!((x - y).abs() < 1e-5, "{method}: {a:?} vs {b:?}");
        }
        let (a, b) = (values(&alone.pooled), values(&out.pooled));
        for (x, y) in a.iter().zip(&b[..a.len()]) {
            assert!((x - y).abs() < 1e-5, "{method} pooled");
        }
    }
}

#[test]
fn the_learning_rate_warms_up_then_decays_and_each_method_has_its_own() {
    let t = ConfigFile::parse(
        "[model]\nbatch = 2\nseq_len = 8\nd_model = 8\nheads = 2\nd_ff = 8\nmethod = \"dense\"\n\
         [train]\nwarmup = 0.1\nlr_by_method = { lora = 2e-3 }\n",
        "test",
    )
    .unwrap()
    .train;
    let s = t.schedule(Method::Dense, true);
    assert_eq!(s.lr, 5e-5);
    let at: Vec<f64> = (0..100).map(|i| s.at(i, 100)).collect();
    assert!((at[0] - 5e-6).abs() < 1e-12 && (at[9] - 5e-5).abs() < 1e-12);
    assert!((at[10] - 5e-5).abs() < 1e-12 && at[99] > 0.0 && at[99] < 1e-6);
    assert!(at.windows(2).skip(10).all(|w| w[1] < w[0]));
    assert_eq!(t.schedule(Method::Lora, true).lr, 2e-3);
    // From scratch: 1e-3, constant, no warm-up unless asked.
    let scratch = sparsecube_train::config::TrainConfig::default().schedule(Method::Dense, false);
    assert_eq!((scratch.lr, scratch.warmup), (1e-3, 0.0));
    assert_eq!(scratch.at(0, 10), scratch.at(9, 10));
    for bad in [
        "lr_by_method = { lora = -1.0 }",
        "lr_by_method = { lorax = 1e-3 }",
        "warmup = 1.5",
    ] {
        let e = ConfigFile::parse(
            &format!(
                "[model]\nbatch = 2\nseq_len = 8\nd_model = 8\nheads = 2\nd_ff = 8\nmethod = \"dense\"\n[train]\n{bad}\n"
            ),
            "test",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("train."), "{bad}: {e}");
    }
}

#[test]
fn macro_f1_weighs_every_class_alike() {
    assert_eq!(finetune::macro_f1(&[0, 1, 2], &[0, 1, 2], 3), 1.0);
    // Always class 0 on a 3:1 set: accuracy 0.75, F1 (0.857 + 0) / 2.
    let f = finetune::macro_f1(&[0, 0, 0, 0], &[0, 0, 0, 1], 2);
    assert!((f - (6.0 / 7.0) / 2.0).abs() < 1e-12, "{f}");
}

#[test]
fn minilm_tokenizer_matches_hugging_face() {
    let Some(dir) = minilm_or_skip("minilm_tokenizer_matches_hugging_face") else {
        return;
    };
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/minilm-tokens.json")).unwrap();
    let seq_len = fixture["seq_len"].as_u64().unwrap() as usize;
    let tok = Tokenizer::open(&dir.join("tokenizer.json"), seq_len).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let enc = tok.encode(&texts).unwrap();
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<i64> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let mask: Vec<u8> = c["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        let span = i * seq_len..(i + 1) * seq_len;
        assert_eq!(enc.tokens[span.clone()], want[..], "ids of {:?}", c["text"]);
        assert_eq!(enc.valid[span], mask[..], "mask of {:?}", c["text"]);
    }
    assert_eq!(
        enc.truncated, 1,
        "the one sentence longer than {seq_len} tokens is cut"
    );
    // [CLS] and [SEP] must leave room for text.
    let e = Tokenizer::open(&dir.join("tokenizer.json"), 2)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("seq_len = 2 cannot hold the tokenizer's 2 special tokens"),
        "{e}"
    );
}

/// MiniLM-L6 (the real checkpoint, 6 layers, d 384) fine-tuned on four topics of the fortunes
/// corpus for a few steps with two methods: the held-out loss falls below its value before
/// training.
#[test]
fn minilm_finetunes_on_fortunes_and_the_held_out_loss_falls() {
    let Some(dir) = minilm_or_skip("minilm_finetunes_on_fortunes_and_the_held_out_loss_falls")
    else {
        return;
    };
    let base = ConfigFile::parse(
        &format!(
            "[model]\nbatch = 8\nseq_len = 32\nd_model = 384\nheads = 12\nd_ff = 1536\nmethod = \"lora\"\n\
             checkpoint = \"{}\"\n\
             [train]\nepochs = 1\nlr = 2e-3\nseed = 1\n\
             [data]\nsource = \"{FORTUNES}\"\nclasses = [\"computers\", \"food\", \"law\", \"sports\"]\n\
             max_per_class = 24\neval_fraction = 0.25\n",
            dir.join("model.safetensors").display()
        ),
        "test",
    )
    .unwrap();
    let mut cfg = base.clone();
    cfg.model =
        sparsecube_train::bert::config_of(&dir.join("model.safetensors"), &base.model).unwrap();
    assert_eq!(
        (cfg.model.layers, cfg.model.d_model, cfg.model.heads),
        (6, 384, 12)
    );
    let (_, task) = finetune::task(&cfg).unwrap();
    assert_eq!((task.train.len(), task.eval.len()), (72, 24));
    assert!(!task.train.valid.is_empty() && task.train.valid.contains(&0));
    for method in [Method::Lora, Method::Sara] {
        let r = finetune_cpu(&cfg, method, None, false).unwrap();
        let before = r.initial.as_ref().unwrap().loss;
        let after = r.last().unwrap().eval_loss;
        assert_eq!(r.losses.len(), 9);
        assert!(
            after < before,
            "{method}: held-out loss {before:.4} before training, {after:.4} after"
        );
        assert!(
            r.data.contains("computers, food, law, sports"),
            "{}",
            r.data
        );
    }
}

#[test]
fn bad_data_sections_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(corpus.join("a"), "one\n%\ntwo\n").unwrap();
    std::fs::write(corpus.join("b"), "lonely\n").unwrap();
    let cfg = |data: &str| {
        ConfigFile::parse(
            &format!(
                "[model]\nbatch = 1\nseq_len = 8\nd_model = 8\nheads = 2\nd_ff = 8\nmethod = \"dense\"\n[data]\n{data}\n"
            ),
            "test",
        )
    };
    for (data, want) in [
        ("eval_fraction = 1.0", "data.eval_fraction"),
        ("max_per_class = 0", "data.max_per_class"),
        ("max_per_class = 1", "data.max_per_class"),
        ("classes = [\"a\"]", "at least 2 classes"),
        ("classes = [\"a\", \"a\"]", "twice"),
    ] {
        let e = cfg(data).unwrap_err().to_string();
        assert!(e.contains(want), "{data}: {e}");
    }
    let c = cfg(&format!("source = \"{}\"", corpus.display())).unwrap();
    let e = finetune::task(&c).err().unwrap().to_string();
    assert!(e.contains("tokenizer"), "{e}");
    let with_tok = cfg(&format!(
        "source = \"{}\"\ntokenizer = \"{}\"",
        corpus.display(),
        dir.path().join("nope.json").display()
    ))
    .unwrap();
    let e = finetune::task(&with_tok).err().unwrap().to_string();
    assert!(e.contains("class `b` has 1 record"), "{e}");
    std::fs::write(corpus.join("b"), "x\n%\ny\n").unwrap();
    let e = finetune::task(&with_tok).err().unwrap().to_string();
    assert!(
        e.contains("no tokenizer at") && e.contains("nope.json"),
        "{e}"
    );
}

/// A run whose learning rate decays linearly to 0 at its last step resumes only for the same
/// number of epochs: more would restart the decay part-way.
#[test]
fn a_linearly_decaying_run_resumes_only_for_its_own_length() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |epochs: usize| {
        ConfigFile::parse(
            &format!(
                "[model]\nbatch = 16\nseq_len = 16\nd_model = 16\nheads = 2\nd_ff = 32\nlayers = 1\n\
                 vocab = 24\nclasses = 3\nmethod = \"lora\"\n\
                 [train]\nepochs = {epochs}\ntrain_samples = 32\neval_samples = 16\nlr = 3e-3\ndecay = \"linear\"\n"
            ),
            "test",
        )
        .unwrap()
    };
    let run = |epochs: usize, resume: bool| {
        finetune_cpu(&cfg(epochs), Method::Lora, Some(dir.path()), resume)
    };
    run(1, false).unwrap();
    let e = run(2, true).err().unwrap().to_string();
    assert!(
        e.contains("written by a run of 1 epochs") && e.contains("--epochs 1"),
        "{e}"
    );
    // The same length resumes (after its last epoch: nothing left to run).
    let r = run(1, true).unwrap();
    assert_eq!(r.resumed_after, Some(0));
}
