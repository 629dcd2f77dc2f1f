//! A child process a test or benchmark started, stopped when dropped: SIGTERM first (so servers
//! such as nginx stop their workers and ours give up their leases), SIGKILL if it is still there
//! after five seconds.

use std::process::Child;
use std::time::Duration;

pub struct Terminate(pub Child);

impl Terminate {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Terminate {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
