//! The node link of a multi-process run: a TCP star to node 0 (see the parent module and
//! docs/adr/0004).

use super::{POLL, Topology, Watch, collective_error};
use crate::TrainError;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        // An answer that already arrived wins over a failure seen since: a peer that found a
        // problem sends the result that shows it before it closes its link, and the receiver
        // must reach the same verdict rather than report only that the peer went away.
        if let Ok(v) = rx.try_recv() {
            return Ok(v);
        }
        if let Some(reason) = watch.reason() {
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

/// The link between the nodes: a star of TCP connections to node 0, which is the start barrier,
/// the cross-node reduction (node 0 sums the nodes' vectors in rank order, so the result does
/// not depend on arrival order, and sends the sum back) and how a node learns that another went
/// away (a killed process's connections are closed by its kernel).
///
/// Lines on the wire: a node sends `hello R` once connected and `done` when it finished; node 0
/// sends `start` once every node said hello, and `lost R` when node R's link broke; either side
/// sends `data N` followed by N little-endian f32.
pub(super) struct NodeLink {
    rank: usize,
    nodes: usize,
    /// Node 0: one writer per node (index r − 1); another node: the writer to node 0. Every
    /// write to a socket goes through its one mutex (frames never interleave).
    writers: Arc<Vec<Mutex<TcpStream>>>,
    /// Vectors received, in the same order as `writers`.
    inbox: Vec<Mutex<mpsc::Receiver<Vec<f32>>>>,
    /// On node 0: the nodes' `done` lines, and how many to wait for.
    done: Option<(Mutex<mpsc::Receiver<usize>>, usize)>,
    watch: Arc<Watch>,
    timeout: Duration,
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
            if inbox.send(v).is_err() {
                return;
            }
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
        let mut nodes: Vec<Option<TcpStream>> = (1..topology.nodes).map(|_| None).collect();
        while nodes.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(link_error)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(link_error)?;
                    let mut line = String::new();
                    let _ = BufReader::new(&s).read_line(&mut line);
                    let rank = line
                        .strip_prefix("hello ")
                        .and_then(|r| r.trim().parse::<usize>().ok())
                        .filter(|r| *r > 0 && *r < topology.nodes);
                    if let Some(r) = rank {
                        if nodes[r - 1].is_some() {
                            return Err(collective_error(format!(
                                "two processes say they are node {r}"
                            )));
                        }
                        s.set_read_timeout(None).map_err(link_error)?;
                        s.set_nodelay(true).map_err(link_error)?;
                        nodes[r - 1] = Some(s);
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
        let streams: Vec<TcpStream> = nodes.into_iter().flatten().collect();
        let mut writers = Vec::new();
        for s in &streams {
            let mut w = s.try_clone().map_err(link_error)?;
            w.set_write_timeout(Some(topology.timeout))
                .map_err(link_error)?;
            writeln!(w, "start").map_err(link_error)?;
            writers.push(Mutex::new(w));
        }
        // The readers relay a lost node to the others through the same writers.
        let writers = Arc::new(writers);
        let relay = writers.clone();
        let (done_tx, done_rx) = mpsc::channel();
        let mut inbox = Vec::new();
        for (i, s) in streams.into_iter().enumerate() {
            let rank = i + 1;
            let (tx, rx) = mpsc::channel();
            inbox.push(Mutex::new(rx));
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
            inbox,
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
        let mut w = stream.try_clone().map_err(link_error)?;
        w.set_write_timeout(Some(topology.timeout))
            .map_err(link_error)?;
        writeln!(w, "hello {}", topology.node_rank).map_err(link_error)?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        stream.set_read_timeout(Some(left)).map_err(link_error)?;
        // One byte at a time up to the newline, so nothing after `start` is read ahead.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            match (&stream).read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        if line != b"start\n" {
            return Err(collective_error(
                "node 0 did not start the run (not every node connected in time)".to_string(),
            ));
        }
        stream.set_read_timeout(None).map_err(link_error)?;
        let (tx, rx) = mpsc::channel();
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
            inbox: vec![Mutex::new(rx)],
            done: None,
            watch,
            timeout: topology.timeout,
        })
    }

    /// Sums `v` over the nodes (node 0 adds the nodes' vectors in rank order) and returns the
    /// sum on every node.
    pub(super) fn sum(
        &self,
        mut v: Vec<f32>,
        what: &str,
        replica: usize,
    ) -> Result<Vec<f32>, TrainError> {
        let recv = |i: usize| {
            let rx = self.inbox[i].lock().unwrap_or_else(|e| e.into_inner());
            wait_for(&rx, what, replica, &self.watch, self.timeout)
        };
        if self.rank == 0 {
            for r in 1..self.nodes {
                let x = recv(r - 1)?;
                if x.len() != v.len() {
                    return Err(collective_error(format!(
                        "node {r} sent {} values for {what}, node 0 has {}",
                        x.len(),
                        v.len()
                    )));
                }
                v.iter_mut().zip(&x).for_each(|(a, b)| *a += b);
            }
            for (i, w) in self.writers.iter().enumerate() {
                send_data(w, &v).map_err(|e| {
                    collective_error(format!("cannot send {what} to node {}: {e}", i + 1))
                })?;
            }
            Ok(v)
        } else {
            send_data(&self.writers[0], &v)
                .map_err(|e| collective_error(format!("cannot send {what} to node 0: {e}")))?;
            recv(0)
        }
    }

    /// Closes every connection of this node without `done`, so the peers see it go away now
    /// (a run that failed here).
    pub(super) fn abort(&self) {
        for w in self.writers.iter() {
            let w = w.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Says `done`; node 0 then waits (a bounded time) for every node's, so that no node is
    /// still receiving the last reduction when node 0's process ends.
    pub(super) fn finish(&self) {
        for w in self.writers.iter() {
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
