//! The ring's provided buffers: one buffer ring (`IORING_REGISTER_PBUF_RING`) that every
//! connection's multishot `recv` takes its buffers from. The kernel picks a buffer per
//! completion; the reactor copies the bytes out into the connection's inbox and hands the
//! buffer straight back, so a connection holds no receive buffer while it waits.

use std::alloc::{Layout, alloc_zeroed};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The buffer group every multishot `recv` names.
pub(super) const GROUP: u16 = 0;
/// Buffers in a connector's ring (a power of two); more reads than this between two reaps
/// end the receives that found none (`ENOBUFS`), which their connections then re-arm.
pub(super) const ENTRIES: u16 = 512;
/// Bytes per buffer: a larger read completes in several.
pub(super) const BUF_SIZE: usize = 2048;

/// The buffer ring and its buffers, registered with one io_uring; only the reactor touches
/// it. Never freed: the kernel may still hold buffers of a ring being torn down, so like the
/// operations still in flight when the reactor ends, they stay allocated (one per connector,
/// for the life of the process).
pub(super) struct BufRing {
    /// The ring's entries, page-aligned; the kernel reads them up to the tail.
    ring: NonNull<BufRingEntry>,
    /// The buffers, `BUF_SIZE` bytes each, written by the kernel.
    bufs: NonNull<u8>,
    /// Buffers in the ring (a power of two).
    entries: u16,
    /// The next tail to publish.
    tail: u16,
}

// SAFETY: the raw pointers are owned by this value (never freed); the kernel only
// writes buffers it was given and the reactor only reads one after its completion.
unsafe impl Send for BufRing {}

fn ring_layout(entries: u16) -> Layout {
    Layout::from_size_align(entries as usize * size_of::<BufRingEntry>(), 4096).expect("layout")
}

fn bufs_layout(entries: u16) -> Layout {
    Layout::from_size_align(entries as usize * BUF_SIZE, 64).expect("layout")
}

impl BufRing {
    /// Allocates a ring of `entries` buffers (a power of two), fills it and registers it
    /// with `ring` as [`GROUP`].
    pub(super) fn register(ring: &IoUring, entries: u16) -> io::Result<BufRing> {
        assert!(
            entries.is_power_of_two(),
            "buffer ring entries: a power of two"
        );
        // SAFETY: both layouts have a non-zero size.
        let (r, b) = unsafe {
            (
                alloc_zeroed(ring_layout(entries)),
                alloc_zeroed(bufs_layout(entries)),
            )
        };
        let (Some(r), Some(b)) = (NonNull::new(r.cast()), NonNull::new(b)) else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let mut br = BufRing {
            ring: r,
            bufs: b,
            entries,
            tail: 0,
        };
        for bid in 0..entries {
            br.give_back(bid);
        }
        br.publish();
        // SAFETY: the ring memory is valid for `entries` entries for the life of the process
        // (never freed).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(r.as_ptr() as u64, entries, GROUP, 0)
        }
        .map_err(|e| io::Error::new(e.kind(), format!("io_uring buffer ring: {e}")))?;
        Ok(br)
    }

    /// The first `len` bytes of buffer `bid`, which a completion just filled.
    pub(super) fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(BUF_SIZE);
        // SAFETY: `bid < entries` (the kernel only hands out ids it was given) and its
        // completion was reaped, so the kernel no longer writes to it until it is given back.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .as_ptr()
                    .add((bid % self.entries) as usize * BUF_SIZE),
                len,
            )
        }
    }

    /// Puts buffer `bid` back in the ring (visible to the kernel at the next [`publish`]).
    pub(super) fn give_back(&mut self, bid: u16) {
        let bid = bid % self.entries;
        // SAFETY: the slot index is masked into the ring; the kernel reads only entries below
        // the published tail, and this one is past it until `publish`.
        unsafe {
            let e = &mut *self
                .ring
                .as_ptr()
                .add((self.tail & (self.entries - 1)) as usize);
            e.set_addr(self.bufs.as_ptr().add(bid as usize * BUF_SIZE) as u64);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back so far visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail is a u16 inside the first entry, aligned, shared with the kernel
        // (which only reads it): an atomic store with release orders the entries before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}
