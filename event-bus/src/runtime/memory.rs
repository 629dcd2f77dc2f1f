//! glibc allocator settings for long-running servers that build big answer sets on any thread
//! (rancher-dns, rancher-metadata). No-ops on other platforms and allocators.

/// Caps glibc's malloc arenas at `max`. glibc gives each thread that allocates its own arena (up
/// to 8 per core) and keeps what is freed there, so a generation of answers built on whichever
/// runtime or blocking-pool thread is free leaves its freed remains in every arena: RSS doing
/// nothing. Call it first thing in `main`, before any other thread exists (measured per component
/// in docs/benchmarks.md).
pub fn limit_malloc_arenas(max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, max);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}

/// Hands free pages of glibc's heaps back to the system: after tens of MB were freed at once
/// that will not be reused before the next change.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}
