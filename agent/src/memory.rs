//! The process's heap: allocator settings, and giving freed memory back to the system.
//!
//! Resident memory per route and per peer is one of our product figures. glibc keeps the
//! pages of freed chunks (UPDATE batches being encoded for a thousand peers, change lists,
//! netlink messages) unless asked to return them, so after a burst the process looks as big
//! as its peak. One task watches how much of the heap is free and trims it when that is
//! worth it; the FIB also trims right after a large load.

use std::time::Duration;

/// Set before any thread starts: fewer arenas (each keeps its own free memory) and large
/// buffers straight from mmap, so that they go back when dropped.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Return freed heap memory to the system (walks the heap: call it off the runtime).
pub fn release() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator holds free inside its heaps (all arenas).
fn free_in_heap() -> usize {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
        let mi = unsafe { libc::mallinfo2() };
        mi.fordblks
    }
    #[cfg(not(target_env = "gnu"))]
    0
}

/// Free memory worth a trim: a couple of megabytes is what a burst leaves behind; less is
/// the normal churn of a running agent and not worth walking the heap for.
const TRIM_ABOVE: usize = 2 << 20;

/// Checks the heap every `every` and trims it when more than [`TRIM_ABOVE`] is free. Runs
/// for the life of the process; the check itself is a few microseconds.
pub async fn trim_task(every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if free_in_heap() > TRIM_ABOVE {
            // A trim after a big load walks a large heap: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(release).await;
        }
    }
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_anon_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Freed small allocations stay resident until trimmed; the trim gives their pages back
    /// even when the top of the heap is still in use.
    #[test]
    fn release_returns_freed_heap() {
        // 20 MB of small blocks (below the mmap threshold); keep the last one so the top of
        // the heap stays in use and only an inner trim can return the rest.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|_| vec![1u8; 1000]).collect();
        let keep = blocks.pop();
        drop(blocks);
        assert!(
            free_in_heap() > TRIM_ABOVE,
            "the freed blocks count as free heap"
        );
        let before = rss_anon_kb();
        release();
        let after = rss_anon_kb();
        drop(keep);
        assert!(
            before.saturating_sub(after) > 10_000,
            "RssAnon {before} kB before the trim, {after} kB after"
        );
    }
}
