//! Data-parallel fine-tuning: `replicas` peers in this process (one thread per device,
//! exchanging through burn-collective's local server, or through the host on a backend that
//! cannot move tensors between its devices: wgpu) and, with `nodes > 1`, as many processes
//! (or machines) linked by a TCP star to node 0 and a TCP ring for the sum (`link`;
//! docs/adr/0004 says why not burn-collective's global orchestrator).
//!
//! Every replica holds the whole model and trains on its slice of each global batch (global
//! rank r of W takes rows [r·b/W, (r+1)·b/W)). Between the backward and the optimizer step the
//! gradients of the trainable tensors, in the module tree's visiting order, and the step's loss
//! are flattened into one vector and all-reduced (mean) in one call: with equal slices the mean
//! of the slices' mean gradients is the global batch's, so the optimizer sees what one replica
//! would have seen on the whole batch. Only what the method trains travels (LoRA's factors, SaRA's
//! packed values, never a frozen [out, in] weight).
//!
//! Before the first step, and after every step or every 50 ([`Topology::check_every`]), the
//! replicas compare a 64-bit hash of their trained tensors through a second all-reduce, so a
//! replica that drifted is an error, not a silently different model.
//!
//! Faults: every collective call waits on a watch. In one process, a replica that fails marks the
//! watch and its peers stop at their next wait with an error naming it. Across processes each
//! node keeps a TCP link to node 0 (the coordinator): a killed process closes it (the kernel does,
//! even on `kill -9`), so the peers learn within a poll interval which node went away; node 0
//! relays the rank of a lost node to the others. A call that makes no progress for `timeout`
//! is abandoned as well.

use crate::config::ConfigFile;
use crate::finetune::{self, Event, RunOptions, RunReport};
use crate::params::{self, Values};
use crate::{SparseBackend, TrainError};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a waiting replica looks at the watch.
const POLL: Duration = Duration::from_millis(50);

/// Where a run's replicas are: how many in this process, how many processes, which one this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Replicas in this process (one per device).
    pub replicas: usize,
    /// Processes (nodes) in the run.
    pub nodes: usize,
    /// This process's rank among the nodes (0: the coordinator).
    pub node_rank: usize,
    /// `HOST:PORT` of node 0 (required when `nodes > 1`): every node keeps a TCP link to it.
    pub coordinator: Option<String>,
    /// How long one collective call may make no progress before the run is abandoned.
    pub timeout: Duration,
    /// The replicas compare their trained tensors after every `check_every`-th step and the
    /// last (and all tensors before the first). 0: after every step while the trained tensors
    /// hold at most 2^20 values, else every 50 steps (the check copies them to the host).
    pub check_every: usize,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            replicas: 1,
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            timeout: Duration::from_secs(600),
            check_every: 0,
        }
    }
}

impl Topology {
    /// Replicas in the whole run.
    pub fn world(&self) -> usize {
        self.replicas.saturating_mul(self.nodes)
    }

    /// Whether more than one replica trains.
    pub fn is_parallel(&self) -> bool {
        self.world() > 1
    }

    /// Checks the topology against the global batch.
    pub fn check(&self, batch: usize) -> Result<(), TrainError> {
        let bad = |problem: String, fix: &'static str| {
            Err(TrainError::Config {
                module: "parallel",
                problem,
                fix,
            })
        };
        if self.replicas == 0 || self.nodes == 0 {
            return bad(
                format!(
                    "--replicas {} --nodes {}: both must be at least 1",
                    self.replicas, self.nodes
                ),
                "pass --replicas 1 or more and --nodes 1 or more",
            );
        }
        if self.node_rank >= self.nodes {
            return bad(
                format!(
                    "--node-rank {} with --nodes {}: ranks are 0..{}",
                    self.node_rank,
                    self.nodes,
                    self.nodes - 1
                ),
                "give each process a distinct --node-rank below --nodes",
            );
        }
        if self.nodes > 1 && self.coordinator.is_none() {
            return Err(missing_coordinator(self.nodes));
        }
        if self.world() > 256 {
            return bad(
                format!("{} replicas in all", self.world()),
                "use at most 256 replicas (the parameter check sums 16-bit hash parts in f32)",
            );
        }
        check_split(batch, self.world())
    }

    /// Node 0's host and port (`check` has refused `nodes > 1` without one).
    fn coordinator_addr(&self) -> Result<(String, u16), TrainError> {
        let Some(text) = self.coordinator.as_deref() else {
            return Err(missing_coordinator(self.nodes));
        };
        split_host_port(text, "--coordinator")
    }
}

fn missing_coordinator(nodes: usize) -> TrainError {
    TrainError::Config {
        module: "parallel",
        problem: format!("--nodes {nodes} without --coordinator"),
        fix: "pass --coordinator HOST:PORT (node 0's address) to every process",
    }
}

/// Checks that a global batch of `batch` rows splits evenly over `world` replicas.
pub(crate) fn check_split(batch: usize, world: usize) -> Result<(), TrainError> {
    if world == 0 || !batch.is_multiple_of(world) {
        return Err(TrainError::Config {
            module: "parallel",
            problem: format!(
                "the global batch of {batch} does not split evenly over {world} replicas"
            ),
            fix: "make model.batch a multiple of --replicas × --nodes",
        });
    }
    Ok(())
}

fn split_host_port(text: &str, flag: &'static str) -> Result<(String, u16), TrainError> {
    let parsed = text
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .filter(|(h, p)| !h.is_empty() && *p > 0);
    parsed.ok_or_else(|| TrainError::Config {
        module: "parallel",
        problem: format!("{flag} `{text}` is not HOST:PORT (a port from 1 to 65535)"),
        fix: "write it as e.g. 127.0.0.1:29500",
    })
}

/// Why the replicas stop: shared by the replicas of a process, and fed by the node links.
#[derive(Default)]
pub struct Watch {
    reason: Mutex<Option<String>>,
}

impl Watch {
    /// Records the first reason to stop.
    pub fn fail(&self, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
    }

    /// The reason to stop, if any.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One replica's place in the run and its collective calls.
pub struct Replica {
    /// Global rank (node_rank × replicas + local index).
    pub rank: usize,
    /// Replicas in the whole run.
    pub world: usize,
    /// Processes in the run.
    pub nodes: usize,
    /// Index among this process's replicas.
    local: usize,
    /// Replicas in this process.
    replicas: usize,
    link: Option<Arc<NodeLink>>,
    /// The in-process exchange through the host, for backends whose tensors cannot move between
    /// devices ([`SparseBackend::MOVES_BETWEEN_DEVICES`]).
    host: Arc<HostExchange>,
    watch: Arc<Watch>,
    timeout: Duration,
    check_every: usize,
}

/// The in-process exchange through host memory: every replica hands its vector to local replica
/// 0, which adds them in local order (the result does not depend on arrival order), sums that
/// over the nodes through the link when there are several, and hands the sum back. One round
/// cannot mix with the next: a replica sends round k + 1 only after it received round k's sum,
/// which replica 0 sends only once it holds every replica's round k.
struct HostExchange {
    to_root: mpsc::Sender<(usize, Vec<f32>)>,
    at_root: Mutex<mpsc::Receiver<(usize, Vec<f32>)>>,
    /// To each local replica (index 0 unused).
    back: Vec<mpsc::Sender<Vec<f32>>>,
    at_replica: Vec<Mutex<mpsc::Receiver<Vec<f32>>>>,
}

impl HostExchange {
    fn new(replicas: usize) -> Self {
        let (to_root, at_root) = mpsc::channel();
        let (back, at_replica) = (0..replicas)
            .map(|_| {
                let (tx, rx) = mpsc::channel();
                (tx, Mutex::new(rx))
            })
            .unzip();
        Self {
            to_root,
            at_root: Mutex::new(at_root),
            back,
            at_replica,
        }
    }
}

fn collective_error(problem: String) -> TrainError {
    TrainError::Collective {
        problem,
        fix: "see the first error of the run (the peer that stopped); restart every replica, with --resume to continue from the last checkpoint",
    }
}

impl Replica {
    fn peer(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    /// Whether the replicas compare their trained tensors (`trained` values) after step `step`
    /// (0-based) of `total` ([`Topology::check_every`]). The same on every replica.
    pub fn checks_after(&self, step: usize, total: usize, trained: usize) -> bool {
        let every = match self.check_every {
            0 if trained <= 1 << 20 => 1,
            0 => 50,
            n => n,
        };
        (step + 1).is_multiple_of(every) || step + 1 >= total
    }

    /// Runs one blocking collective call on a helper thread and waits for it while watching for
    /// a peer's failure and for the timeout.
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, burn_collective::CollectiveError> + Send + 'static,
    ) -> Result<T, TrainError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("collective-{}", self.rank))
            .spawn(move || {
                let _ = tx.send(f());
            })
            .map_err(|e| collective_error(format!("cannot start a collective call: {e}")))?;
        match wait_for(&rx, what, self.rank, &self.watch, self.timeout)? {
            Ok(v) => Ok(v),
            Err(e) => Err(collective_error(format!(
                "replica {}: {what} failed in burn-collective: {e:?}",
                self.rank
            ))),
        }
    }

    /// Sums `v` over every replica of the run through the host ([`HostExchange`]).
    fn host_sum(&self, mut v: Vec<f32>, what: &str) -> Result<Vec<f32>, TrainError> {
        let ex = &self.host;
        if self.local != 0 {
            ex.to_root.send((self.local, v)).map_err(|_| {
                collective_error(format!("replica {}: {what}: replica 0 ended", self.rank))
            })?;
            let rx = ex.at_replica[self.local]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            return wait_for(&rx, what, self.rank, &self.watch, self.timeout);
        }
        let mut parts: Vec<Option<Vec<f32>>> = (0..self.replicas).map(|_| None).collect();
        {
            let rx = ex.at_root.lock().unwrap_or_else(|e| e.into_inner());
            for _ in 1..self.replicas {
                let (r, x) = wait_for(&rx, what, self.rank, &self.watch, self.timeout)?;
                if x.len() != v.len() {
                    return Err(collective_error(format!(
                        "local replica {r} sent {} values for {what}, replica 0 has {}",
                        x.len(),
                        v.len()
                    )));
                }
                parts[r] = Some(x);
            }
        }
        for x in parts.iter().flatten() {
            v.iter_mut().zip(x).for_each(|(a, b)| *a += b);
        }
        if let Some(link) = &self.link {
            v = link.sum(v, what, self.rank)?;
        }
        for tx in ex.back.iter().skip(1) {
            // A replica that already stopped has said why through the watch.
            let _ = tx.send(v.clone());
        }
        Ok(v)
    }

    /// Sums `t` over every replica of the run: burn-collective's all-reduce between this
    /// process's replicas, then (several nodes) the node link's sum by local replica 0 and
    /// burn-collective's broadcast of it to the others. A backend that cannot move tensors
    /// between its devices sums through the host instead.
    fn sum<B: SparseBackend>(
        &self,
        t: Tensor<B, 1>,
        what: &str,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let device = t.device();
        if self.replicas > 1 && !B::MOVES_BETWEEN_DEVICES {
            let v = t
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| collective_error(format!("{what}: {e:?}")))?;
            let n = v.len();
            let v = self.host_sum(v, what)?;
            return Ok(Tensor::from_data(TensorData::new(v, [n]), &device));
        }
        let peer = self.peer();
        let local = if self.replicas > 1 {
            let prim = t.into_primitive().tensor();
            let out = self.call(what, move || {
                burn_collective::all_reduce::<B>(peer, prim, ReduceOperation::Sum)
            })?;
            Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out))
        } else {
            t
        };
        let Some(link) = &self.link else {
            return Ok(local);
        };
        let summed = if self.local == 0 {
            let v = local
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| collective_error(format!("{what}: {e:?}")))?;
            let n = v.len();
            let v = link.sum(v, what, self.rank)?;
            Some(Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &device))
        } else {
            None
        };
        if self.replicas == 1 {
            return summed.ok_or_else(|| collective_error(format!("{what}: no sum")));
        }
        let root = summed.map(|t| t.into_primitive().tensor());
        let out = self.call(what, move || burn_collective::broadcast::<B>(peer, root))?;
        Ok(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out)))
    }

    /// Averages the gradients of `model`'s trainable tensors and the step's `loss` over the
    /// replicas, in one all-reduce. Returns the averaged gradients, the global loss and the bytes
    /// this replica sent into the reduction.
    pub fn all_reduce<B: AutodiffBackend, M: Module<B>>(
        &self,
        model: &M,
        grads: GradientsParams,
        loss: Tensor<B::InnerBackend, 1>,
        step: usize,
    ) -> Result<(GradientsParams, f32, u64), TrainError>
    where
        B::InnerBackend: SparseBackend,
    {
        let mut take = Take::<B> {
            grads,
            parts: Vec::new(),
            layout: Vec::new(),
            present: Vec::new(),
        };
        model.visit(&mut take);
        let Take {
            mut grads,
            mut parts,
            layout,
            present,
        } = take;
        let device = loss.device();
        let flags = present.len();
        parts.push(loss.reshape([1]));
        parts.push(Tensor::from_data(
            TensorData::new(present, [flags]),
            &device,
        ));
        let flat = Tensor::cat(parts, 0);
        let bytes = flat.dims()[0] as u64 * 4;
        let flat = self
            .sum(flat, &format!("the gradient all-reduce of step {step}"))?
            .div_scalar(self.world as f32);
        let grad_len: usize = layout
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // The loss, then whether any replica had each parameter's gradient.
        let tail = flat
            .clone()
            .slice(grad_len..grad_len + 1 + flags)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        let loss = tail.first().copied().unwrap_or(f32::NAN);
        let mut offset = 0;
        for (i, (id, shape)) in layout.iter().enumerate() {
            let n: usize = shape.iter().product();
            // A parameter no replica reached gets no gradient, as on one replica (AdamW then
            // leaves it alone).
            if tail.get(1 + i).is_some_and(|f| *f > 0.0) {
                let g = flat.clone().slice(offset..offset + n);
                grads.register::<B::InnerBackend, 1>(*id, g);
            }
            offset += n;
        }
        // Back to each parameter's shape.
        let mut put = Reshape::<B> {
            grads,
            _b: std::marker::PhantomData,
        };
        model.visit(&mut put);
        Ok((put.grads, loss, bytes))
    }

    /// Checks that every replica holds the same trained tensors (all tensors when `all`): a
    /// 64-bit hash of their bits, summed over the replicas as four 16-bit parts, must be W times
    /// this replica's own.
    pub fn check_in_sync<B: AutodiffBackend, M: Module<B>>(
        &self,
        model: &M,
        all: bool,
        when: &str,
        device: &B::Device,
    ) -> Result<(), TrainError>
    where
        B::InnerBackend: SparseBackend,
    {
        let h = hash_params(model, all);
        let parts: Vec<f32> = (0..4).map(|i| ((h >> (16 * i)) & 0xFFFF) as f32).collect();
        let t =
            Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(parts.clone(), [4]), device);
        let summed = self
            .sum(t, &format!("the parameter check {when}"))?
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        let w = self.world as f32;
        if summed.len() != 4 || summed.iter().zip(&parts).any(|(s, p)| *s != w * p) {
            let fix_hint = if all {
                "the replicas started from different parameters: with --resume every node needs rank 0's checkpoint in its --out"
            } else {
                "the replicas' updates diverged"
            };
            let problem = format!(
                "replica {}'s {} differ from the other replicas' {when} ({fix_hint})",
                self.rank,
                if all { "tensors" } else { "trained tensors" }
            );
            self.watch.fail(problem.clone());
            return Err(collective_error(problem));
        }
        Ok(())
    }
}

/// A 64-bit hash of the (trainable, or all) parameters' names and bits in visiting order:
/// FNV-1a's multiply over 64-bit words (two f32 at a time) with a shift to spread the high bits
/// down — a drift detector, eight times fewer multiplies than byte-wise FNV on a large model.
fn hash_params<B: Backend, M: Module<B>>(model: &M, all: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |w: u64| {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 31;
    };
    for p in params::named_where(model, |trainable| all || trainable) {
        p.name.bytes().for_each(|b| eat(u64::from(b)));
        match &p.values {
            Values::F32(v) => {
                eat(v.len() as u64);
                for pair in v.chunks(2) {
                    let lo = u64::from(pair[0].to_bits());
                    let hi = pair.get(1).map_or(0, |x| u64::from(x.to_bits()));
                    eat(lo | hi << 32);
                }
            }
            Values::I64(v) => v.iter().for_each(|x| eat(*x as u64)),
        }
    }
    h
}

/// Takes the trainable parameters' gradients out (zeros where a parameter got none this step),
/// flattened, in visiting order.
struct Take<B: AutodiffBackend> {
    grads: GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    layout: Vec<(ParamId, Vec<usize>)>,
    /// 1 where the parameter got a gradient on this replica, else 0.
    present: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Take<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if !t.is_require_grad() {
            return;
        }
        let shape = t.dims().to_vec();
        let n: usize = shape.iter().product();
        let g = self.grads.remove::<B::InnerBackend, D>(param.id);
        self.present.push(if g.is_some() { 1.0 } else { 0.0 });
        let g = g
            .map(|g| g.reshape([n]))
            .unwrap_or_else(|| Tensor::zeros([n], &t.inner().device()));
        self.parts.push(g);
        self.layout.push((param.id, shape));
    }
}

/// Gives the flat reduced gradients their parameters' shapes again.
struct Reshape<B: AutodiffBackend> {
    grads: GradientsParams,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Reshape<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.val().is_require_grad() {
            return;
        }
        if let Some(g) = self.grads.remove::<B::InnerBackend, 1>(param.id) {
            let shape: [usize; D] = param.val().dims();
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.reshape(shape));
        }
    }
}

/// One run's collective session in this process: registration, the node link, the end.
pub struct Session {
    topology: Topology,
    watch: Arc<Watch>,
    config: CollectiveConfig,
    link: Option<Arc<NodeLink>>,
    host: Arc<HostExchange>,
}

mod link;
use link::{NodeLink, wait_for};

/// burn-collective keeps one local server per backend type in the process: runs must not
/// overlap.
static SESSION: Mutex<()> = Mutex::new(());

impl Session {
    /// Opens the run's collective session: with several nodes, node 0 listens on the
    /// coordinator's port and waits for every node; the others connect to it.
    pub fn open(topology: &Topology) -> Result<Self, TrainError> {
        let watch = Arc::new(Watch::default());
        let config = CollectiveConfig::default().with_num_devices(topology.replicas);
        let link = if topology.nodes > 1 {
            let (host, port) = topology.coordinator_addr()?;
            Some(Arc::new(NodeLink::open(
                topology,
                &host,
                port,
                watch.clone(),
            )?))
        } else {
            None
        };
        Ok(Self {
            topology: topology.clone(),
            watch,
            config,
            link,
            host: Arc::new(HostExchange::new(topology.replicas)),
        })
    }

    /// The watch every replica of this process waits on.
    pub fn watch(&self) -> Arc<Watch> {
        self.watch.clone()
    }

    /// Registers the replica with local index `local` on `device` and returns its handle.
    pub fn register<B: Backend>(
        &self,
        local: usize,
        device: &B::Device,
    ) -> Result<Replica, TrainError> {
        let replica = Replica {
            rank: self.topology.node_rank * self.topology.replicas + local,
            world: self.topology.world(),
            nodes: self.topology.nodes,
            local,
            replicas: self.topology.replicas,
            link: self.link.clone(),
            host: self.host.clone(),
            watch: self.watch.clone(),
            timeout: self.topology.timeout,
            check_every: self.topology.check_every,
        };
        if self.topology.replicas > 1 {
            let (peer, device, config) = (replica.peer(), device.clone(), self.config.clone());
            replica.call("registration", move || {
                burn_collective::register::<B>(peer, device, config)
            })?;
        }
        Ok(replica)
    }

    /// Runs `f` with the process-wide collective lock held and burn-collective's state for `B`
    /// reset afterwards, whatever `f` returns.
    pub fn exclusive<B: Backend, T>(f: impl FnOnce() -> T) -> T {
        let _guard = SESSION.lock().unwrap_or_else(|e| e.into_inner());
        burn_collective::reset_collective::<B>();
        let out = f();
        burn_collective::reset_collective::<B>();
        out
    }

    /// Ends a failed session: closes the node links at once, so the other nodes stop now
    /// naming this one instead of waiting out the timeout.
    pub fn abort(self) {
        if let Some(link) = self.link {
            link.abort();
        }
    }

    /// Ends the session: tells node 0 this node finished (so its link closing is not a fault);
    /// node 0 waits for every node's word.
    pub fn close(self) {
        if let Some(link) = self.link {
            link.finish();
        }
    }
}

/// Marks the watch when the replica's thread unwinds from a panic.
struct PanicWatch<'a> {
    watch: &'a Watch,
    rank: usize,
}

impl Drop for PanicWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.watch.fail(format!("replica {} panicked", self.rank));
        }
    }
}

/// Fine-tunes as this process's share of the run `topology` describes: one replica per device
/// of `devices` (one thread each; local replica 0 on the calling thread, reporting progress), and
/// returns local replica 0's report with every local replica's step time. One replica in all is
/// plain [`finetune`](crate::finetune::finetune).
pub fn finetune_parallel<B>(
    cfg: &ConfigFile,
    devices: &[B::Device],
    topology: &Topology,
    opts: RunOptions<'_>,
) -> Result<RunReport, TrainError>
where
    B: AutodiffBackend + SparseBackend,
    B::InnerBackend: SparseBackend,
{
    topology.check(cfg.model.batch)?;
    if devices.len() != topology.replicas {
        return Err(TrainError::Config {
            module: "parallel",
            problem: format!(
                "{} replicas in this process but {} devices",
                topology.replicas,
                devices.len()
            ),
            fix: "give one device per replica",
        });
    }
    if !topology.is_parallel() {
        return finetune::finetune::<B>(cfg, &devices[0], opts);
    }
    Session::exclusive::<B::InnerBackend, _>(|| {
        let session = Session::open(topology)?;
        if topology.nodes > 1 {
            (opts.progress)(Event::Joined {
                node_rank: topology.node_rank,
                nodes: topology.nodes,
            });
        }
        let watch = session.watch();
        let (method, name, out_dir, resume) = (
            opts.method,
            opts.device_name.clone(),
            opts.out_dir.clone(),
            opts.resume,
        );
        let one = |local: usize, dev: &B::Device, opts: RunOptions<'_>| {
            let rank = topology.node_rank * topology.replicas + local;
            // A replica that panics (a device error, say) stops its peers at their next wait.
            let _guard = PanicWatch {
                watch: &watch,
                rank,
            };
            let result = session
                .register::<B::InnerBackend>(local, dev)
                .and_then(|r| finetune::finetune_replica::<B>(cfg, dev, opts, Some(&r)));
            if let Err(e) = &result {
                watch.fail(format!("replica {rank} failed: {e}"));
            }
            result
        };
        let (first, others) = std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .skip(1)
                .map(|(local, dev)| {
                    let (name, out_dir, one) = (name.clone(), out_dir.clone(), &one);
                    std::thread::Builder::new()
                        .name(format!("replica-{local}"))
                        .spawn_scoped(s, move || {
                            let none = || None;
                            let mut quiet = |_: Event| {};
                            one(
                                local,
                                dev,
                                RunOptions {
                                    method,
                                    device_name: name,
                                    out_dir,
                                    resume,
                                    progress: &mut quiet,
                                    memory_in_use: &none,
                                    // Local replica 0 alone watches for a stop request; the
                                    // others stop at their next wait, naming it.
                                    stop: None,
                                },
                            )
                        })
                })
                .collect();
            let first = one(0, &devices[0], opts);
            let others: Vec<Result<RunReport, TrainError>> = handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(collective_error("a replica's thread panicked".into()))
                    }),
                    Err(e) => Err(collective_error(format!(
                        "cannot start a replica's thread: {e}"
                    ))),
                })
                .collect();
            (first, others)
        });
        let finished = first.and_then(|mut report| {
            for r in others {
                report.replica_step_ms.push(r?.step_ms);
            }
            Ok(report)
        });
        match finished {
            Ok(report) => {
                session.close();
                Ok(report)
            }
            Err(e) => {
                session.abort();
                Err(e)
            }
        }
    })
}
