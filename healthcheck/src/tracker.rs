//! The checker's verdict per container and its transitions: pure, fed with `show stat` rows.
//!
//! HAProxy's own hysteresis (`rise`/`fall`) decides; the tracker only reads its verdict:
//! - `UP` → up; `DOWN` and `DOWN x/y` (recovering, not there yet) → down;
//! - `UP x/y` (failing, not fallen yet) → no change; before the first check HAProxy shows
//!   `UP 1/n` with check status `INI`, which is "not known yet", not up (Rancher reported it as
//!   `INIT`, which Cattle then had to drop);
//! - anything else (`MAINT`, `DRAIN`, `NOLB`, `no check`: states the checker never sets) → no change.

use std::collections::BTreeMap;

use event_bus::model::HealthReport;

use crate::stats::ServerStat;
use crate::targets::Target;

/// What the checker last concluded about one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub up: bool,
    pub status: String,
    pub detail: String,
}

/// What one row of `show stat` says, if anything.
pub fn observe(row: &ServerStat) -> Option<Verdict> {
    let up = match row.status.as_str() {
        "UP" => true,
        s if s == "DOWN" || s.starts_with("DOWN ") => false,
        _ => return None,
    };
    if row.check_status == "INI" {
        // Configured, never checked yet (a state restored from the server-state file keeps
        // its last check status, so this is only ever a new server).
        return None;
    }
    let detail = match (row.check_status.as_str(), row.check_code.as_str()) {
        ("", _) => String::new(),
        (s, "") => s.to_string(),
        (s, code) => format!("{s} {code}"),
    };
    Some(Verdict { up, status: if up { "UP".into() } else { "DOWN".into() }, detail })
}

#[derive(Debug, Clone)]
struct Tracked {
    target: Target,
    verdict: Option<Verdict>,
}

/// Every target this checker runs, with its last verdict; hands out numbered reports.
#[derive(Debug)]
pub struct Tracker {
    host_uuid: String,
    boot: String,
    seq: u64,
    by_name: BTreeMap<String, Tracked>,
}

impl Tracker {
    pub fn new(host_uuid: &str, boot: &str) -> Tracker {
        Tracker { host_uuid: host_uuid.into(), boot: boot.into(), seq: 0, by_name: BTreeMap::new() }
    }

    /// Follows a new set of targets: verdicts of targets that stay are kept, others forgotten.
    pub fn set_targets(&mut self, targets: &[Target]) {
        let mut next = BTreeMap::new();
        for t in targets {
            let verdict = self.by_name.remove(&t.name).and_then(|old| old.verdict);
            next.insert(t.name.clone(), Tracked { target: t.clone(), verdict });
        }
        self.by_name = next;
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Applies one `show stat`; the reports of the verdicts that changed, with the seconds since
    /// HAProxy changed each server's status.
    pub fn apply(&mut self, rows: &[ServerStat]) -> Vec<(HealthReport, Option<u64>)> {
        let mut out = Vec::new();
        for row in rows {
            let Some(tracked) = self.by_name.get_mut(&row.server) else { continue };
            let Some(v) = observe(row) else { continue };
            if tracked.verdict.as_ref().map(|old| old.up) == Some(v.up) {
                // Same verdict: keep the freshest detail without a report.
                tracked.verdict = Some(v);
                continue;
            }
            tracked.verdict = Some(v);
            self.seq += 1;
            out.push((report(&self.host_uuid, &self.boot, self.seq, tracked), row.last_change_s));
        }
        out
    }

    /// The current verdict on every target that has one (what a state request answers).
    pub fn current(&self) -> Vec<HealthReport> {
        self.by_name
            .values()
            .filter(|t| t.verdict.is_some())
            .map(|t| report(&self.host_uuid, &self.boot, self.seq, t))
            .collect()
    }
}

fn report(host: &str, boot: &str, seq: u64, t: &Tracked) -> HealthReport {
    let v = t.verdict.as_ref().expect("reported targets have a verdict");
    HealthReport {
        container_uuid: t.target.container_uuid.clone(),
        host_uuid: host.to_string(),
        start_count: t.target.start_count,
        up: v.up,
        status: v.status.clone(),
        detail: v.detail.clone(),
        boot: boot.to_string(),
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(server: &str, status: &str, check: &str) -> ServerStat {
        ServerStat {
            backend: server.into(),
            server: server.into(),
            status: status.into(),
            check_status: check.into(),
            check_code: if check == "L7STS" { "503".into() } else { String::new() },
            last_change_s: Some(0),
        }
    }

    fn target(name: &str) -> Target {
        Target {
            name: name.into(),
            container_uuid: name.into(),
            start_count: 1,
            ip: "127.0.0.1".into(),
            port: 1,
            interval_ms: 100,
            timeout_ms: 100,
            rise: 2,
            fall: 3,
            http: None,
        }
    }

    #[test]
    fn reports_only_transitions_of_haproxys_verdict() {
        let mut t = Tracker::new("h1", "boot");
        t.set_targets(&[target("a")]);
        assert!(t.apply(&[row("a", "UP 1/3", "INI")]).is_empty(), "not checked yet");
        let r = t.apply(&[row("a", "UP", "L7OK")]);
        assert_eq!((r.len(), r[0].0.up, r[0].0.seq), (1, true, 1));
        assert!(t.apply(&[row("a", "UP", "L7OK")]).is_empty());
        assert!(t.apply(&[row("a", "UP 2/3", "L7STS")]).is_empty(), "failing, not fallen");
        let r = t.apply(&[row("a", "DOWN", "L7STS")]);
        assert_eq!((r[0].0.up, r[0].0.detail.as_str(), r[0].0.seq), (false, "L7STS 503", 2));
        assert!(t.apply(&[row("a", "DOWN 1/2", "L7OK")]).is_empty(), "recovering, not risen");
        assert!(t.apply(&[row("a", "MAINT", "")]).is_empty());
        assert!(t.apply(&[row("zzz", "DOWN", "L4CON")]).is_empty(), "not ours");
        assert_eq!(t.current().len(), 1);
        // A target that goes away and comes back starts unknown.
        t.set_targets(&[]);
        t.set_targets(&[target("a")]);
        assert_eq!(t.apply(&[row("a", "DOWN", "L4CON")]).len(), 1);
    }
}
