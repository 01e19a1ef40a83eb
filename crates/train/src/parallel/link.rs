//! The node link of a multi-process run: a TCP star to node 0 (see the parent module and
//! docs/adr/0004).

use super::{POLL, Topology, Watch, collective_error};
use crate::TrainError;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an answer still in flight may take once the watch says a peer stopped.
const IN_FLIGHT: Duration = Duration::from_millis(500);

/// Waits on `rx` while watching for a peer's failure and for the timeout.
pub(super) fn wait_for<T>(
    rx: &mpsc::Receiver<T>,
    what: &str,
    rank: usize,
    watch: &Watch,
    timeout: Duration,
) -> Result<T, TrainError> {
    let started = Instant::now();
    loop {
        // An answer that arrived wins over a failure seen since: a peer that found a problem
        // sends the result that shows it before it closes its links, and the receiver must reach
        // the same verdict rather than report only that the peer went away. The answer may come
        // on another connection (the ring) than the one whose closing marked the watch (the
        // star), so it gets a moment to arrive.
        if let Ok(v) = rx.try_recv() {
            return Ok(v);
        }
        if let Some(reason) = watch.reason() {
            if let Ok(v) = rx.recv_timeout(IN_FLIGHT) {
                return Ok(v);
            }
            return Err(collective_error(format!(
                "replica {rank} stopped during {what}: {reason}"
            )));
        }
        match rx.recv_timeout(POLL) {
            Ok(v) => return Ok(v),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The sender goes away after marking the watch: say why when it did.
                let why = watch
                    .reason()
                    .unwrap_or_else(|| "it ended without an answer".to_string());
                return Err(collective_error(format!(
                    "replica {rank} stopped during {what}: {why}"
                )));
            }
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() > timeout => {
                return Err(collective_error(format!(
                    "replica {rank}: no answer from the other replicas within {:.0} s during {what}",
                    timeout.as_secs_f64()
                )));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The link between the nodes: a star of TCP connections to node 0, the control plane (the
/// start barrier, and how a node learns that another went away: a killed process's connections
/// are closed by its kernel), and a ring of TCP connections, node r to node r + 1 mod N, that
/// carries the cross-node sum.
///
/// The sum is a ring all-reduce (reduce-scatter, then all-gather, over N chunks of the vector):
/// every node sends and receives 2·(N − 1)/N of the vector whatever N is, where a star through
/// node 0 made node 0 move 2·(N − 1) whole vectors. Chunk c is summed along the ring starting at
/// node c, always in that order, then copied to every node: the sum does not depend on timing
/// and every node holds the same bits.
///
/// Lines on the star: a node sends `hello R PORT` once connected (PORT: its ring listener) and
/// `done` when it finished; node 0 sends `start HOST PORT` (the node's ring successor; HOST `-`:
/// on node 0's machine, at the coordinator's host) once every node said hello, and `lost R` when node R's
/// link broke. On the ring: the connecting node says `ring R`, then `data N` frames (N
/// little-endian f32) and `done`.
pub(super) struct NodeLink {
    rank: usize,
    nodes: usize,
    /// Node 0: one writer per node (index r − 1); another node: the writer to node 0. Every
    /// write to a socket goes through its one mutex (frames never interleave).
    writers: Arc<Vec<Mutex<TcpStream>>>,
    /// The ring: the writer to the successor and the frames from the predecessor.
    ring: Ring,
    /// On node 0: the nodes' `done` lines, and how many to wait for.
    done: Option<(Mutex<mpsc::Receiver<usize>>, usize)>,
    watch: Arc<Watch>,
    timeout: Duration,
}

/// Where a node's ring listener is: the address node 0 saw it connect from (`None`: loopback, on
/// node 0's machine) and its port.
type RingAddr = (Option<std::net::IpAddr>, u16);

/// This node's two ring connections.
struct Ring {
    next: Mutex<TcpStream>,
    from_prev: Mutex<mpsc::Receiver<Vec<f32>>>,
    prev: usize,
}

/// The most values one `data` frame may carry (1 GiB of f32).
const MAX_VALUES: usize = 1 << 28;

fn link_error(e: impl std::fmt::Display) -> TrainError {
    collective_error(format!("node link: {e}"))
}

/// Reads one node's messages until it says `done` or the connection ends; `gone` is told who
/// went away in the second case.
fn read_link(
    stream: TcpStream,
    inbox: mpsc::Sender<Vec<f32>>,
    on_done: impl FnOnce(),
    on_lost: impl Fn(&str),
    gone: impl FnOnce(),
) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        let msg = line.trim();
        if msg == "done" {
            on_done();
            return;
        }
        if let Some(r) = msg.strip_prefix("lost ") {
            on_lost(r);
            return;
        }
        if let Some(n) = msg
            .strip_prefix("data ")
            .and_then(|n| n.parse::<usize>().ok())
        {
            // A frame larger than any model's gradient is a broken or foreign peer.
            if n > MAX_VALUES {
                break;
            }
            let mut bytes = vec![0u8; n * 4];
            if reader.read_exact(&mut bytes).is_err() {
                break;
            }
            let v = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // Nobody listening (the star carries no data; the run ended): dropped.
            let _ = inbox.send(v);
        }
    }
    gone();
}

fn send_data(w: &Mutex<TcpStream>, v: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(16 + v.len() * 4);
    bytes.extend_from_slice(format!("data {}\n", v.len()).as_bytes());
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    w.write_all(&bytes)?;
    w.flush()
}

impl NodeLink {
    pub(super) fn open(
        topology: &Topology,
        host: &str,
        port: u16,
        watch: Arc<Watch>,
    ) -> Result<Self, TrainError> {
        let deadline = Instant::now() + topology.timeout.min(Duration::from_secs(120));
        if topology.node_rank == 0 {
            Self::open_coordinator(topology, port, watch, deadline)
        } else {
            Self::open_node(topology, host, port, watch, deadline)
        }
    }

    fn open_coordinator(
        topology: &Topology,
        port: u16,
        watch: Arc<Watch>,
        deadline: Instant,
    ) -> Result<Self, TrainError> {
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
            collective_error(format!(
                "node 0 cannot listen on the coordinator port {port}: {e}"
            ))
        })?;
        listener.set_nonblocking(true).map_err(link_error)?;
        let ring_listener = ring_listener()?;
        let mut nodes: Vec<Option<(TcpStream, RingAddr)>> =
            (1..topology.nodes).map(|_| None).collect();
        while nodes.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((s, from)) => {
                    s.set_nonblocking(false).map_err(link_error)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(link_error)?;
                    let line = read_line_unbuffered(&s);
                    let hello = line.strip_prefix("hello ").and_then(|rest| {
                        let (r, port) = rest.trim().split_once(' ')?;
                        Some((r.parse::<usize>().ok()?, port.parse::<u16>().ok()?))
                    });
                    if let Some((r, port)) = hello.filter(|(r, _)| *r > 0 && *r < topology.nodes) {
                        if nodes[r - 1].is_some() {
                            return Err(collective_error(format!(
                                "two processes say they are node {r}"
                            )));
                        }
                        s.set_read_timeout(None).map_err(link_error)?;
                        s.set_nodelay(true).map_err(link_error)?;
                        // A node that reached node 0 through loopback runs on node 0's
                        // machine: its predecessor reaches it at the coordinator's host, as
                        // it reaches node 0 (127.0.0.1 would be its own machine).
                        let at = (!from.ip().is_loopback()).then_some(from.ip());
                        nodes[r - 1] = Some((s, (at, port)));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = (1..topology.nodes)
                            .filter(|r| nodes[r - 1].is_none())
                            .map(|r| r.to_string())
                            .collect();
                        return Err(collective_error(format!(
                            "node(s) {} did not connect to the coordinator on port {port} in time",
                            missing.join(", ")
                        )));
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(link_error(e)),
            }
        }
        let (streams, rings): (Vec<TcpStream>, Vec<RingAddr>) = nodes.into_iter().flatten().unzip();
        let mut writers = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            let mut w = s.try_clone().map_err(link_error)?;
            w.set_write_timeout(Some(topology.timeout))
                .map_err(link_error)?;
            // Node r's successor: node r + 1, or node 0 for the last node.
            match rings.get(i + 1) {
                Some((Some(ip), port)) => writeln!(w, "start {ip} {port}"),
                Some((None, port)) => writeln!(w, "start - {port}"),
                None => writeln!(w, "start - {}", local_port(&ring_listener)?),
            }
            .map_err(link_error)?;
            writers.push(Mutex::new(w));
        }
        // Node 1 as node 0 reaches it (through loopback when it runs here).
        let first = match rings[0] {
            (Some(ip), port) => SocketAddr::new(ip, port),
            (None, port) => SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let ring = Ring::join(topology, &[first], &ring_listener, watch.clone(), deadline)?;
        // The readers relay a lost node to the others through the same writers.
        let writers = Arc::new(writers);
        let relay = writers.clone();
        let (done_tx, done_rx) = mpsc::channel();
        for (i, s) in streams.into_iter().enumerate() {
            let rank = i + 1;
            // The star carries no data: frames would be a foreign peer's, dropped.
            let (tx, _) = mpsc::channel();
            let (watch, relay, done_tx) = (watch.clone(), relay.clone(), done_tx.clone());
            std::thread::spawn(move || {
                read_link(
                    s,
                    tx,
                    || {
                        let _ = done_tx.send(rank);
                    },
                    |_| {},
                    || {
                        watch.fail(format!("node {rank} went away (its link to node 0 closed)"));
                        for (j, w) in relay.iter().enumerate() {
                            if j + 1 != rank {
                                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                                let _ = writeln!(w, "lost {rank}");
                            }
                        }
                    },
                )
            });
        }
        Ok(Self {
            rank: 0,
            nodes: topology.nodes,
            writers,
            ring,
            done: Some((Mutex::new(done_rx), topology.nodes - 1)),
            watch,
            timeout: topology.timeout,
        })
    }

    fn open_node(
        topology: &Topology,
        host: &str,
        port: u16,
        watch: Arc<Watch>,
        deadline: Instant,
    ) -> Result<Self, TrainError> {
        let addr: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| collective_error(format!("--coordinator {host}:{port}: {e}")))?
            .collect();
        let stream = loop {
            let s = addr
                .iter()
                .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).ok());
            match s {
                Some(s) => break s,
                None if Instant::now() > deadline => {
                    return Err(collective_error(format!(
                        "node {} cannot reach the coordinator at {host}:{port} (is node 0 running?)",
                        topology.node_rank
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_nodelay(true).map_err(link_error)?;
        let ring_listener = ring_listener()?;
        let mut w = stream.try_clone().map_err(link_error)?;
        w.set_write_timeout(Some(topology.timeout))
            .map_err(link_error)?;
        writeln!(
            w,
            "hello {} {}",
            topology.node_rank,
            local_port(&ring_listener)?
        )
        .map_err(link_error)?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        stream.set_read_timeout(Some(left)).map_err(link_error)?;
        let line = read_line_unbuffered(&stream);
        let next = line.strip_prefix("start ").and_then(|rest| {
            let (h, p) = rest.trim().split_once(' ')?;
            let p = p.parse::<u16>().ok()?;
            // `-`: node 0, reached at the coordinator's host.
            let h = if h == "-" { host } else { h };
            Some((h, p).to_socket_addrs().ok()?.collect::<Vec<_>>())
        });
        let Some(next) = next else {
            return Err(collective_error(
                "node 0 did not start the run (not every node connected in time)".to_string(),
            ));
        };
        stream.set_read_timeout(None).map_err(link_error)?;
        let ring = Ring::join(topology, &next, &ring_listener, watch.clone(), deadline)?;
        let (tx, _) = mpsc::channel();
        let (w1, w2) = (watch.clone(), watch.clone());
        std::thread::spawn(move || {
            read_link(
                stream,
                tx,
                || {},
                move |r| w1.fail(format!("node {r} went away (node 0 lost its link)")),
                move || w2.fail("node 0 (the coordinator) went away".to_string()),
            )
        });
        Ok(Self {
            rank: topology.node_rank,
            nodes: topology.nodes,
            writers: Arc::new(vec![Mutex::new(w)]),
            ring,
            done: None,
            watch,
            timeout: topology.timeout,
        })
    }

    /// Sums `v` over the nodes with the ring all-reduce (see [`NodeLink`]) and returns the sum
    /// on every node.
    pub(super) fn sum(
        &self,
        mut v: Vec<f32>,
        what: &str,
        replica: usize,
    ) -> Result<Vec<f32>, TrainError> {
        let (n, r, len) = (self.nodes, self.rank, v.len());
        let chunk = |c: usize| c * len / n..(c + 1) * len / n;
        let send = |c: usize, v: &[f32]| {
            send_data(&self.ring.next, &v[chunk(c)]).map_err(|e| {
                self.failure(format!(
                    "replica {replica}: cannot send {what} to node {}: {e}",
                    (r + 1) % n
                ))
            })
        };
        let recv = |c: usize| {
            let rx = self
                .ring
                .from_prev
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let x = wait_for(&rx, what, replica, &self.watch, self.timeout)?;
            if x.len() != chunk(c).len() {
                return Err(collective_error(format!(
                    "node {} sent {} values of a part of {what}, node {r} expected {} (the nodes \
                     reduce vectors of different lengths: do they run the same config?)",
                    self.ring.prev,
                    x.len(),
                    chunk(c).len()
                )));
            }
            Ok(x)
        };
        // Reduce-scatter: after step s node r holds chunk (r − s − 1)'s sum over nodes
        // r − s − 1 … r, added in that order; after N − 1 steps, chunk r + 1 whole.
        for s in 0..n - 1 {
            send((r + n - s) % n, &v)?;
            let c = (r + 2 * n - s - 1) % n;
            let x = recv(c)?;
            v[chunk(c)].iter_mut().zip(&x).for_each(|(a, b)| *a += *b);
        }
        // All-gather: pass the whole chunks on.
        for s in 0..n - 1 {
            send((r + 1 + n - s) % n, &v)?;
            let c = (r + n - s) % n;
            let x = recv(c)?;
            v[chunk(c)].copy_from_slice(&x);
        }
        Ok(v)
    }

    /// The error of a failed send: a peer that went away breaks the connection before this
    /// node's readers see it close, so wait a moment for the watch to name the peer.
    fn failure(&self, fallback: String) -> TrainError {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Some(reason) = self.watch.reason() {
                return collective_error(reason);
            }
            std::thread::sleep(POLL);
        }
        collective_error(fallback)
    }

    /// Closes every connection of this node without `done`, so the peers see it go away now
    /// (a run that failed here).
    pub(super) fn abort(&self) {
        for w in self.writers.iter().chain([&self.ring.next]) {
            let w = w.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Says `done`; node 0 then waits (a bounded time) for every node's, so that no node is
    /// still receiving the last reduction when node 0's process ends.
    pub(super) fn finish(&self) {
        for w in self.writers.iter().chain([&self.ring.next]) {
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(w, "done");
        }
        if let Some((rx, count)) = &self.done {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..*count {
                let left = deadline.saturating_duration_since(Instant::now());
                if rx.recv_timeout(left).is_err() {
                    break;
                }
            }
        }
    }
}

/// A listener for the ring predecessor's connection, on a port the system picks.
fn ring_listener() -> Result<TcpListener, TrainError> {
    let l = TcpListener::bind(("0.0.0.0", 0))
        .map_err(|e| collective_error(format!("cannot listen for the node ring: {e}")))?;
    l.set_nonblocking(true).map_err(link_error)?;
    Ok(l)
}

fn local_port(l: &TcpListener) -> Result<u16, TrainError> {
    Ok(l.local_addr().map_err(link_error)?.port())
}

/// One line, read a byte at a time up to the newline, so nothing after it is read ahead (the
/// stream is handed to a buffered reader next); without the newline.
fn read_line_unbuffered(stream: &TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 512 {
        match (&*stream).read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).trim_end().to_string()
}

impl Ring {
    /// Connects to the successor at one of `next` and accepts the predecessor on `listener`, each
    /// saying its rank first; a reader thread then feeds the predecessor's frames to the ring's
    /// inbox and marks the watch if that connection breaks.
    fn join(
        topology: &Topology,
        next: &[SocketAddr],
        listener: &TcpListener,
        watch: Arc<Watch>,
        deadline: Instant,
    ) -> Result<Self, TrainError> {
        // Every node has started by now: the ring gets at least 30 s of its own.
        let deadline = deadline.max(Instant::now() + Duration::from_secs(30));
        let (rank, n) = (topology.node_rank, topology.nodes);
        let (succ, prev) = ((rank + 1) % n, (rank + n - 1) % n);
        // Connecting does not wait for the successor to accept (the kernel completes the
        // handshake), so every node connects first and accepts second without a deadlock.
        let mut out = loop {
            let first = next
                .iter()
                .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).ok());
            match first {
                Some(s) => break s,
                None if Instant::now() > deadline => {
                    let at: Vec<String> = next.iter().map(ToString::to_string).collect();
                    return Err(collective_error(format!(
                        "node {rank} cannot reach node {succ} at {} for the node ring (a \
                         firewall between the machines?)",
                        at.join(" or ")
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        out.set_nodelay(true).map_err(link_error)?;
        out.set_write_timeout(Some(topology.timeout))
            .map_err(link_error)?;
        writeln!(out, "ring {rank}").map_err(link_error)?;
        let from_prev = loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(link_error)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(link_error)?;
                    if read_line_unbuffered(&s) == format!("ring {prev}") {
                        s.set_read_timeout(None).map_err(link_error)?;
                        break s;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(collective_error(format!(
                            "node {prev} did not join node {rank} in the node ring in time"
                        )));
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(link_error(e)),
            }
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            read_link(
                from_prev,
                tx,
                || {},
                |_| {},
                move || watch.fail(format!("node {prev} went away (its ring link closed)")),
            )
        });
        Ok(Self {
            next: Mutex::new(out),
            from_prev: Mutex::new(rx),
            prev,
        })
    }
}
