//! A BERT-layout encoder (post-LayerNorm, GELU FFN, mean pooling, a classification head), or a
//! causal decoder variant of the same stack, whose attention, FFN and linears are switched per
//! method ([`Encoder::with_method`]). Weights load from Hugging Face BERT safetensors checkpoints
//! by their key names ([`crate::bert`]).

use crate::TrainError;
use crate::config::{Method, MethodOptions, ModelConfig};
use crate::modules::attention::MultiHeadAttention;
use crate::modules::cbm::ConceptBottleneck;
use crate::modules::ffn::{DenseFfn, Ffn};
use crate::modules::linear::{
    DenseLinear, Linear, LoraLinear, MonarchLinear, PstLinear, SaraLinear,
};
use crate::modules::{NmLinear, SptAttention, normal, param};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use kernels_ir::pattern::{Activation, Cbm, Nm, Pattern, PqTopK, Pst, Routed, TopK};
use kernels_ir::reference::rng::SplitMix64;

/// LayerNorm over the last dimension with a learned scale and shift.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// γ [d].
    pub weight: Param<Tensor<B, 1>>,
    /// β [d].
    pub bias: Param<Tensor<B, 1>>,
    /// ε.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// γ = 1, β = 0.
    pub fn new(d: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: param(Tensor::ones([d], device)),
            bias: param(Tensor::zeros([d], device)),
            eps,
        }
    }

    /// (x − mean)/√(var + ε)·γ + β over each row of x [T, d].
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = (centered.clone() * centered.clone()).mean_dim(1);
        centered / var.add_scalar(self.eps).sqrt() * self.weight.val().unsqueeze()
            + self.bias.val().unsqueeze()
    }

    fn frozen(self) -> Self {
        Self {
            weight: self.weight.set_require_grad(false),
            bias: self.bias.set_require_grad(false),
            eps: self.eps,
        }
    }
}

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    /// [vocab, d].
    pub word: Param<Tensor<B, 2>>,
    /// [max_len, d].
    pub position: Param<Tensor<B, 2>>,
    /// [types, d] (every token is type 0 here).
    pub token_type: Param<Tensor<B, 2>>,
    /// LayerNorm.
    pub norm: LayerNorm<B>,
}

impl<B: Backend> Embeddings<B> {
    /// Rows [batch·seq, d] for token ids [batch, seq].
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, l] = ids.dims();
        let d = self.word.dims()[1];
        let words = self.word.val().select(0, ids.reshape([b * l]));
        let pos = self
            .position
            .val()
            .slice(0..l)
            .unsqueeze::<3>()
            .repeat_dim(0, b)
            .reshape([b * l, d]);
        let types = self.token_type.val().slice(0..1);
        self.norm.forward(words + pos + types)
    }

    fn frozen(self) -> Self {
        Self {
            word: self.word.set_require_grad(false),
            position: self.position.set_require_grad(false),
            token_type: self.token_type.set_require_grad(false),
            norm: self.norm.frozen(),
        }
    }
}

/// One post-LN transformer layer: h = LN(x + attention(x)), out = LN(h + FFN(h)).
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    /// Self-attention.
    pub attention: MultiHeadAttention<B>,
    /// LayerNorm after attention.
    pub attention_norm: LayerNorm<B>,
    /// Feed-forward block.
    pub ffn: Ffn<B>,
    /// LayerNorm after the FFN.
    pub output_norm: LayerNorm<B>,
}

/// The classification head.
// Variants hold parameter handles; one per model.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Head<B: Backend> {
    /// A linear classifier on the pooled features.
    Linear(DenseLinear<B>),
    /// Sparse-CBM's concept bottleneck.
    Cbm(ConceptBottleneck<B>),
}

/// The encoder (or causal decoder) with its head.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Embeddings.
    pub embeddings: Embeddings<B>,
    /// Layers.
    pub layers: Vec<EncoderLayer<B>>,
    /// Head.
    pub head: Head<B>,
}

/// Receives each layer's index, queries and keys [B, H, L, D] (codebook re-fits).
pub type QkHook<'a, B> = dyn FnMut(usize, Tensor<B, 4>, Tensor<B, 4>) + 'a;

/// What a forward returns.
pub struct EncoderOutput<B: Backend> {
    /// Class logits [batch, classes].
    pub logits: Tensor<B, 2>,
    /// The methods' auxiliary losses summed (codebook MSE, CBM's Gumbel and L1 terms); 0 if none.
    pub aux: Tensor<B, 1>,
    /// Mean-pooled features [batch, d].
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> Encoder<B> {
    /// A dense model with BERT's initialisation (N(0, 0.02²) weights, zero biases, unit
    /// LayerNorms), drawn from `seed`.
    pub fn init(cfg: &ModelConfig, seed: u64, device: &B::Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        let d = cfg.d_model;
        let eps = cfg.layer_norm_eps;
        let embeddings = Embeddings {
            word: param(normal(&mut rng, [cfg.vocab, d], 0.02, device)),
            position: param(normal(&mut rng, [cfg.max_len(), d], 0.02, device)),
            token_type: param(normal(&mut rng, [2, d], 0.02, device)),
            norm: LayerNorm::new(d, eps, device),
        };
        let layers = (0..cfg.layers)
            .map(|_| {
                let mut lin =
                    |i: usize, o: usize| Linear::Dense(DenseLinear::init(i, o, &mut rng, device));
                EncoderLayer {
                    attention: MultiHeadAttention {
                        query: lin(d, d),
                        key: lin(d, d),
                        value: lin(d, d),
                        output: lin(d, d),
                        spt: None,
                        heads: cfg.heads,
                        causal: cfg.causal,
                    },
                    attention_norm: LayerNorm::new(d, eps, device),
                    ffn: Ffn::Dense(DenseFfn {
                        intermediate: lin(d, cfg.d_ff),
                        output: lin(cfg.d_ff, d),
                    }),
                    output_norm: LayerNorm::new(d, eps, device),
                }
            })
            .collect();
        let head = Head::Linear(DenseLinear::init(d, cfg.classes, &mut rng, device));
        Self {
            embeddings,
            layers,
            head,
        }
    }

    /// The model `method` trains, converted from this dense one: what is frozen, what is
    /// replaced by which sparse module (see the table in docs/training.md).
    pub fn with_method(
        self,
        cfg: &ModelConfig,
        method: Method,
        opts: &MethodOptions,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let mut rng = SplitMix64::new(seed ^ 0x5EED);
        let device = self.embeddings.word.device();
        // Every linear, by the method.
        let mut model = self.map_linears::<TrainError>(|l| {
            let Linear::Dense(d) = l else { return Ok(l) };
            Ok(match method {
                Method::Dense | Method::Spt | Method::SptBlock => Linear::Dense(d),
                Method::Cbm => Linear::Dense(d.frozen()),
                Method::Lora => Linear::Lora(LoraLinear::from_dense(
                    d,
                    opts.lora_rank,
                    opts.lora_alpha,
                    &mut rng,
                )),
                Method::Sara => {
                    Linear::Sara(SaraLinear::from_dense(d.frozen_bias(), opts.sara_select())?)
                }
                Method::Pst => {
                    let pattern = Pst {
                        sparsity: opts.pst_sparsity,
                        ..Pst::default()
                    };
                    Linear::Pst(PstLinear::from_dense(d.frozen_bias(), pattern, &mut rng)?)
                }
                Method::Monarch => Linear::Monarch(MonarchLinear::from_dense(d, opts.blocks)?),
                Method::Nm => Linear::Nm(NmLinear::from_dense(d, Nm::default())?),
            })
        })?;
        if matches!(
            method,
            Method::Lora | Method::Sara | Method::Pst | Method::Cbm
        ) {
            model.embeddings = model.embeddings.frozen();
            for l in &mut model.layers {
                l.attention_norm = l.attention_norm.clone().frozen();
                l.output_norm = l.output_norm.clone().frozen();
            }
        }
        if method.is_spt() {
            let head_dim = cfg.d_model / cfg.heads;
            let pq = PqTopK {
                topk: opts.topk.map_or(TopK::SeqFraction(8), TopK::Fixed),
                causal: cfg.causal,
                block: opts.block_for(method),
                ..PqTopK::default()
            };
            let routed = Routed {
                blocks: opts.blocks,
                top: opts.top,
                act: Activation::Gelu,
                ..Routed::default()
            };
            for l in &mut model.layers {
                let core = SptAttention::new(pq, cfg.seq_len, head_dim, 0.5, &mut rng, &device)?;
                l.attention.spt = Some(core);
                l.ffn = crate::dsl::ffn(l.ffn.clone(), Pattern::Routed(routed), &mut rng)?;
            }
        }
        if method == Method::Cbm {
            let pattern = Cbm {
                topk: opts.cbm_topk,
            };
            model.head = Head::Cbm(ConceptBottleneck::new(
                cfg.d_model,
                cfg.concepts,
                cfg.classes,
                pattern,
                &mut rng,
                &device,
            )?);
        }
        Ok(model)
    }

    /// The dense model with the weights this one computes with: merged LoRA and SaRA, exported
    /// PST masks, Monarch multiplied out, SPT's attention and routed FFN as dense attention and
    /// a dense FFN over the same weights (routing dropped). Every parameter is trainable.
    pub fn to_dense(&self) -> Self {
        let dense = |l: &Linear<B>| Linear::Dense(l.to_dense());
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.attention;
                let ffn = match &l.ffn {
                    Ffn::Dense(f) => DenseFfn {
                        intermediate: dense(&f.intermediate),
                        output: dense(&f.output),
                    },
                    Ffn::Routed(r) => DenseFfn {
                        intermediate: Linear::Dense(DenseLinear::new(r.w1.val(), r.b1.val())),
                        output: Linear::Dense(DenseLinear::new(r.w2.val(), r.b2.val())),
                    },
                };
                EncoderLayer {
                    attention: MultiHeadAttention {
                        query: dense(&a.query),
                        key: dense(&a.key),
                        value: dense(&a.value),
                        output: dense(&a.output),
                        spt: None,
                        heads: a.heads,
                        causal: a.causal,
                    },
                    attention_norm: l.attention_norm.clone(),
                    ffn: Ffn::Dense(ffn),
                    output_norm: l.output_norm.clone(),
                }
            })
            .collect();
        Self {
            embeddings: self.embeddings.clone(),
            layers,
            head: self.head.clone(),
        }
    }

    /// The model with `f` applied to every linear of every layer (attention projections, then
    /// the dense FFN's two).
    pub fn map_linears<E>(
        self,
        mut f: impl FnMut(Linear<B>) -> Result<Linear<B>, E>,
    ) -> Result<Self, E> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            let a = l.attention;
            let attention = MultiHeadAttention {
                query: f(a.query)?,
                key: f(a.key)?,
                value: f(a.value)?,
                output: f(a.output)?,
                ..a
            };
            let ffn = match l.ffn {
                Ffn::Dense(d) => Ffn::Dense(DenseFfn {
                    intermediate: f(d.intermediate)?,
                    output: f(d.output)?,
                }),
                routed => routed,
            };
            layers.push(EncoderLayer {
                attention,
                ffn,
                ..l
            });
        }
        Ok(Self { layers, ..self })
    }

    /// Every linear of every layer, in [`Encoder::map_linears`]'s order.
    pub fn linears(&self) -> Vec<&Linear<B>> {
        self.layers
            .iter()
            .flat_map(|l| {
                let a = &l.attention;
                let mut v = vec![&a.query, &a.key, &a.value, &a.output];
                if let Ffn::Dense(d) = &l.ffn {
                    v.extend([&d.intermediate, &d.output]);
                }
                v
            })
            .collect()
    }

    /// The model at training step `step` of `total` (PST's sparsity schedule).
    pub fn at_step(self, step: usize, total: usize) -> Self {
        let Ok(stepped) =
            self.map_linears::<std::convert::Infallible>(|l| Ok(l.at_step(step, total)));
        stepped
    }
}

impl<B: crate::SparseBackend> Encoder<B> {
    /// Logits for token ids [batch, seq]; `train` turns on CBM's selection noise. With
    /// `keep_qk`, every layer's queries and keys are handed to `qk` (codebook re-fits).
    ///
    /// `valid` [batch, seq] (1 for a real token, 0 for padding; None: no padding) is honoured
    /// as BERT does: padded keys get no attention weight in dense attention, and the pooling is
    /// the mean over real tokens only. SPT's sparse attention kernels take no key mask: under
    /// SPT a padded key can still be selected (see docs/training.md).
    pub fn forward_with(
        &self,
        ids: Tensor<B, 2, Int>,
        valid: Option<Tensor<B, 2>>,
        train: bool,
        qk: Option<&mut QkHook<'_, B>>,
    ) -> EncoderOutput<B> {
        let [b, l] = ids.dims();
        let device = ids.device();
        let pad = valid.as_ref().map(|v| v.clone().equal_elem(0.0));
        let mut x = self.embeddings.forward(ids);
        let mut aux = Tensor::<B, 1>::zeros([1], &device);
        let mut hook = qk;
        for (i, layer) in self.layers.iter().enumerate() {
            let out = layer
                .attention
                .forward(x.clone(), b, l, pad.clone(), hook.is_some());
            if let (Some(h), Some((q, k))) = (hook.as_mut(), out.qk) {
                h(i, q, k);
            }
            if let Some(a) = out.aux {
                aux = aux + a;
            }
            let h = layer.attention_norm.forward(x + out.y);
            x = layer.output_norm.forward(h.clone() + layer.ffn.forward(h));
        }
        let d = x.dims()[1];
        let x = x.reshape([b, l, d]);
        let pooled = match valid {
            None => x.mean_dim(1).reshape([b, d]),
            Some(v) => {
                let count = v.clone().sum_dim(1).clamp_min(1.0); // [b, 1]
                (x * v.reshape([b, l, 1])).sum_dim(1).reshape([b, d]) / count
            }
        };
        let logits = match &self.head {
            Head::Linear(h) => h.forward(pooled.clone()),
            Head::Cbm(h) => {
                let out = h.forward(pooled.clone(), train);
                aux = aux + out.aux;
                out.logits
            }
        };
        EncoderOutput {
            logits,
            aux,
            pooled,
        }
    }

    /// Logits for token ids [batch, seq].
    pub fn forward(&self, ids: Tensor<B, 2, Int>, train: bool) -> EncoderOutput<B> {
        self.forward_with(ids, None, train, None)
    }

    /// Logits for token ids [batch, seq] of which `valid` marks the real tokens (1) and the
    /// padding (0).
    pub fn forward_masked(
        &self,
        ids: Tensor<B, 2, Int>,
        valid: Option<Tensor<B, 2>>,
        train: bool,
    ) -> EncoderOutput<B> {
        self.forward_with(ids, valid, train, None)
    }

    /// Every SPT layer's codebook re-fitted (k-means, `iters` Lloyd steps) to the queries and
    /// keys the model computes on `ids`: the periodic re-fit of SPT's codebooks.
    pub fn refit_codebooks(
        mut self,
        ids: Tensor<B, 2, Int>,
        valid: Option<Tensor<B, 2>>,
        iters: usize,
    ) -> Self {
        if self.layers.iter().all(|l| l.attention.spt.is_none()) {
            return self;
        }
        let mut seen: Vec<Option<Tensor<B, 4>>> = vec![None; self.layers.len()];
        {
            let mut keep = |i: usize, q: Tensor<B, 4>, k: Tensor<B, 4>| {
                seen[i] = Some(Tensor::cat(vec![q.detach(), k.detach()], 2));
            };
            let _ = self.forward_with(ids, valid, false, Some(&mut keep));
        }
        for (layer, x) in self.layers.iter_mut().zip(seen) {
            if let (Some(core), Some(x)) = (layer.attention.spt.take(), x) {
                layer.attention.spt = Some(core.refit(&x, iters));
            }
        }
        self
    }
}

impl<B: Backend> DenseLinear<B> {
    /// The same linear with its bias frozen (SaRA and PST train only their own tensors).
    pub fn frozen_bias(self) -> Self {
        Self {
            weight: self.weight,
            bias: self.bias.set_require_grad(false),
        }
    }
}
