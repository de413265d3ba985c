//! `TcpRing`: the CPU ranks' collective. Each rank has one TCP connection to the next rank and
//! one from the previous; an all-reduce is a reduce-scatter then an all-gather around the ring
//! (each rank sends and receives 2(n−1)/n of the buffer: bandwidth-optimal). Sending runs on a
//! scoped thread while the calling thread receives and reduces segment by segment, so transfer
//! and addition overlap.
//!
//! Peers prove membership in the connection handshake (job token digest, generation, rank); a
//! connection that fails it is dropped. Buffers travel in native byte order: every host of a
//! job must have the same endianness (all x86-64 and aarch64 hosts do).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"RFRING01";
/// Receive granularity: the reduction of one segment overlaps the transfer of the next.
const SEGMENT: usize = 1 << 18; // floats (1 MiB)

/// A connected ring.
pub struct TcpRing {
    rank: usize,
    world: usize,
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    next_addr: String,
    prev_addr: String,
    scratch: Vec<f32>,
}

/// Binds the listener a rank advertises in its join request.
pub fn listen(local_addr: &str) -> io::Result<(TcpListener, String)> {
    let listener = TcpListener::bind((local_addr, 0))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr.to_string()))
}

fn handshake(token: &str, generation: u64, rank: usize) -> Vec<u8> {
    let mut msg = MAGIC.to_vec();
    msg.extend(Sha256::digest(format!("rankforge-ring:{token}").as_bytes()));
    msg.extend(generation.to_le_bytes());
    msg.extend((rank as u64).to_le_bytes());
    msg
}

fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // Best effort: the kernel caps it at net.core.[rw]mem_max.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(())
}

fn as_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), std::mem::size_of_val(x)) }
}

fn as_bytes_mut(x: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above, and any byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), std::mem::size_of_val(x)) }
}

/// Chunk `i` of `n` elements split `world` ways.
fn bounds(n: usize, world: usize, i: usize) -> (usize, usize) {
    (n * i / world, n * (i + 1) / world)
}

/// Two disjoint sub-slices of `buf`, one shared, one mutable.
fn split_pair(buf: &mut [f32], a: (usize, usize), b: (usize, usize)) -> (&[f32], &mut [f32]) {
    assert!(a.1 <= b.0 || b.1 <= a.0, "ring chunks overlap");
    let ptr = buf.as_mut_ptr();
    // SAFETY: both ranges lie in `buf` and do not overlap (asserted above).
    unsafe {
        (
            std::slice::from_raw_parts(ptr.add(a.0), a.1 - a.0),
            std::slice::from_raw_parts_mut(ptr.add(b.0), b.1 - b.0),
        )
    }
}

impl TcpRing {
    /// Connects rank `rank` to its neighbours: dials `peers[rank + 1]`, accepts `rank - 1` on
    /// `listener`. Gives up after `timeout`.
    pub fn connect(
        listener: TcpListener,
        rank: usize,
        world: usize,
        peers: &[String],
        token: &str,
        generation: u64,
        timeout: Duration,
    ) -> io::Result<TcpRing> {
        let mut ring = TcpRing {
            rank,
            world,
            next: None,
            prev: None,
            next_addr: String::new(),
            prev_addr: String::new(),
            scratch: Vec::new(),
        };
        if world == 1 {
            return Ok(ring);
        }
        let next = (rank + 1) % world;
        let prev = (rank + world - 1) % world;
        ring.next_addr = peers[next].clone();
        ring.prev_addr = peers[prev].clone();
        let deadline = Instant::now() + timeout;
        // Dial first: the peer's listener is bound before it joins, so this cannot deadlock.
        let target = ring.next_addr.to_socket_addrs()?.next().ok_or_else(|| io::Error::other("no address"))?;
        let mut out = loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        tune(&out)?;
        out.write_all(&handshake(token, generation, rank))?;
        let expected = handshake(token, generation, prev);
        listener.set_nonblocking(true)?;
        let inbound = loop {
            match listener.accept() {
                Ok((mut s, from)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut got = vec![0u8; expected.len()];
                    if s.read_exact(&mut got).is_ok() && got == expected {
                        s.set_read_timeout(None)?;
                        tune(&s)?;
                        break s;
                    }
                    tracing::warn!(%from, "refused a ring connection that is not rank {prev} of this job and generation");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, format!("rank {prev} never connected")));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        ring.next = Some(out);
        ring.prev = Some(inbound);
        Ok(ring)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn peer_error(&self, op: &str, e: io::Error, sending: bool) -> io::Error {
        let (peer, addr) = if sending {
            ((self.rank + 1) % self.world, &self.next_addr)
        } else {
            ((self.rank + self.world - 1) % self.world, &self.prev_addr)
        };
        let what = match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                "closed the connection (it stopped or died)".to_string()
            }
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("{op}: rank {peer} at {addr} {what}"))
    }

    /// Sends `send` to the next rank while receiving as many floats from the previous one,
    /// which are added into (`reduce`) or copied over `recv`.
    fn exchange(&mut self, op: &str, send: &[f32], recv: &mut [f32], reduce: bool) -> io::Result<()> {
        let mut next = self.next.take().expect("connected ring");
        let mut prev = self.prev.take().expect("connected ring");
        if self.scratch.len() < SEGMENT {
            self.scratch.resize(SEGMENT, 0.0);
        }
        let scratch = &mut self.scratch;
        let killer = next.try_clone();
        let (sent, received) = std::thread::scope(|s| {
            let sender = s.spawn(|| next.write_all(as_bytes(send)));
            let received = (|| {
                for dst in recv.chunks_mut(SEGMENT) {
                    if reduce {
                        let tmp = &mut scratch[..dst.len()];
                        prev.read_exact(as_bytes_mut(tmp))?;
                        for (d, x) in dst.iter_mut().zip(tmp.iter()) {
                            *d += *x;
                        }
                    } else {
                        prev.read_exact(as_bytes_mut(dst))?;
                    }
                }
                Ok::<(), io::Error>(())
            })();
            if received.is_err() {
                // Unblock the sender if the peer is gone.
                if let Ok(k) = &killer {
                    let _ = k.shutdown(std::net::Shutdown::Both);
                }
            }
            (sender.join().expect("ring sender thread"), received)
        });
        self.next = Some(next);
        self.prev = Some(prev);
        received.map_err(|e| self.peer_error(op, e, false))?;
        sent.map_err(|e| self.peer_error(op, e, true))
    }

    /// Sums `buf` across ranks in place; every rank ends with identical values.
    pub fn all_reduce_sum(&mut self, buf: &mut [f32]) -> io::Result<()> {
        let (w, r, n) = (self.world, self.rank, buf.len());
        if w == 1 {
            return Ok(());
        }
        for s in 0..w - 1 {
            let (send, recv) = split_pair(buf, bounds(n, w, (r + w - s) % w), bounds(n, w, (r + 2 * w - s - 1) % w));
            self.exchange("all-reduce", send, recv, true)?;
        }
        for s in 0..w - 1 {
            let (send, recv) = split_pair(buf, bounds(n, w, (r + 1 + w - s) % w), bounds(n, w, (r + w - s) % w));
            self.exchange("all-reduce", send, recv, false)?;
        }
        Ok(())
    }

    /// Copies `root`'s `buf` to every rank, forwarded segment by segment around the ring.
    pub fn broadcast(&mut self, buf: &mut [f32], root: usize) -> io::Result<()> {
        let w = self.world;
        if w == 1 {
            return Ok(());
        }
        let last = (root + w - 1) % w; // the rank that does not forward
        for seg in buf.chunks_mut(SEGMENT) {
            if self.rank != root {
                let prev = self.prev.as_mut().expect("connected ring");
                prev.read_exact(as_bytes_mut(seg)).map_err(|e| self.peer_error("broadcast", e, false))?;
            }
            if self.rank != last {
                let next = self.next.as_mut().expect("connected ring");
                next.write_all(as_bytes(seg)).map_err(|e| self.peer_error("broadcast", e, true))?;
            }
        }
        Ok(())
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> io::Result<()> {
        let mut x = [0f32; 1];
        self.all_reduce_sum(&mut x)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `world` rings in threads of this process.
    pub(crate) fn rings(world: usize) -> Vec<TcpRing> {
        let listeners: Vec<_> = (0..world).map(|_| listen("127.0.0.1").unwrap()).collect();
        let peers: Vec<String> = listeners.iter().map(|(_, a)| a.clone()).collect();
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(r, (l, _))| {
                let peers = peers.clone();
                std::thread::spawn(move || TcpRing::connect(l, r, world, &peers, "tok", 3, Duration::from_secs(10)).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn on_all<T: Send>(rings: Vec<TcpRing>, f: impl Fn(&mut TcpRing) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let f = &f;
            let hs: Vec<_> = rings.into_iter().map(|mut r| s.spawn(move || f(&mut r))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_and_broadcast_agree_for_every_world_and_odd_sizes() {
        for world in [2, 3, 4] {
            for n in [0usize, 1, 5, 1000, 3 * SEGMENT + 7] {
                let out = on_all(rings(world), |ring| {
                    let r = ring.rank();
                    let mut buf: Vec<f32> = (0..n).map(|i| (i % 97) as f32 + r as f32 * 0.5).collect();
                    ring.all_reduce_sum(&mut buf).unwrap();
                    let mut b: Vec<f32> = (0..n).map(|i| if r == 1 { i as f32 } else { -1.0 }).collect();
                    ring.broadcast(&mut b, 1).unwrap();
                    ring.barrier().unwrap();
                    (buf, b)
                });
                let half_sum: f32 = (0..world).map(|r| r as f32 * 0.5).sum();
                for (buf, b) in &out {
                    for (i, x) in buf.iter().enumerate() {
                        assert_eq!(*x, (i % 97) as f32 * world as f32 + half_sum, "world {world} n {n} i {i}");
                    }
                    assert!(b.iter().enumerate().all(|(i, x)| *x == i as f32), "broadcast world {world} n {n}");
                }
                // Bit-identical on every rank.
                assert!(out.iter().all(|(buf, _)| as_bytes(buf) == as_bytes(&out[0].0)));
            }
        }
    }

    #[test]
    fn a_dead_peer_is_named_not_hung() {
        let mut rs = rings(2);
        drop(rs.pop()); // rank 1 vanishes
        let mut buf = vec![1.0f32; 1000];
        let e = rs[0].all_reduce_sum(&mut buf).unwrap_err().to_string();
        assert!(e.contains("rank 1 at 127.0.0.1:"), "{e}");
    }

    #[test]
    fn a_stranger_cannot_join_the_ring() {
        let (l0, a0) = listen("127.0.0.1").unwrap();
        let (l1, a1) = listen("127.0.0.1").unwrap();
        // Someone without the token dials rank 0 first; rank 0 must wait for the real rank 1.
        let mut intruder = TcpStream::connect(&a0).unwrap();
        intruder.write_all(&handshake("wrong", 3, 1)).unwrap();
        let peers = vec![a0, a1];
        let p1 = peers.clone();
        let h = std::thread::spawn(move || TcpRing::connect(l1, 1, 2, &p1, "tok", 3, Duration::from_secs(10)).unwrap());
        let r0 = TcpRing::connect(l0, 0, 2, &peers, "tok", 3, Duration::from_secs(10)).unwrap();
        let r1 = h.join().unwrap();
        let out = on_all(vec![r0, r1], |r| {
            let mut b = vec![r.rank() as f32 + 1.0; 10];
            r.all_reduce_sum(&mut b).unwrap();
            b[0]
        });
        assert_eq!(out, vec![3.0, 3.0]);
    }
}
