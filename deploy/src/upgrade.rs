//! In-service upgrades, as rancher-compose's `up --upgrade`: the new launch config is written
//! with the service in state `upgrading` and the previous one kept (`extra.upgrade`); the
//! controller then replaces the containers in batches ([`crate::schedule`]): `batch_size` units
//! at a time, `interval` apart, each batch waiting until the previous one runs, stopping the old
//! units first or, with `start_first`, once their replacements run. Old units are stopped, not
//! removed, until `--confirm-upgrade` (state `active`: stopped units go) or `--rollback` (the
//! previous launch config back, state `rolling-back`: the old units are started again and the
//! new ones removed, in the same batches).
//!
//! Which config a container was made from is its `version` (`extra.version`): a stable hash of
//! the service's launch configs when the unit was placed.

use event_bus::model::{Container, LaunchConfig, Service};
use serde::{Deserialize, Serialize};

/// The key of the version in a container's `extra`, and of the upgrade in a service's.
pub const VERSION: &str = "version";
pub const UPGRADE: &str = "upgrade";

/// Rancher's defaults (rancher-compose `--batch-size 2`, `--interval 1000` ms).
pub const DEFAULT_BATCH_SIZE: u32 = 2;
pub const DEFAULT_INTERVAL_MS: u64 = 1000;

/// An upgrade in progress or done and not yet confirmed: what to go back to, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upgrade {
    pub previous_launch_config: LaunchConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secondary_launch_configs: Vec<LaunchConfig>,
    pub batch_size: u32,
    pub interval_ms: u64,
    #[serde(default)]
    pub start_first: bool,
}

impl Upgrade {
    pub fn of(svc: &Service) -> Option<Upgrade> {
        svc.extra.get(UPGRADE).and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// How a service wants to be upgraded: rancher-compose.yml's `upgrade_strategy`
/// (`batch_size`, `interval_millis`, `start_first`), else Rancher's defaults.
pub fn strategy(svc: &Service) -> (u32, u64, bool) {
    let s = svc.extra.get("upgrade_strategy");
    let get = |k: &str| s.and_then(|s| s.get(k));
    (
        get("batch_size").and_then(|v| v.as_u64()).map(|v| v.max(1) as u32).unwrap_or(DEFAULT_BATCH_SIZE),
        get("interval_millis").and_then(|v| v.as_u64()).unwrap_or(DEFAULT_INTERVAL_MS),
        get("start_first").and_then(|v| v.as_bool()).unwrap_or(false),
    )
}

/// Whether the controller is replacing the service's containers.
pub fn in_progress(svc: &Service) -> bool {
    matches!(svc.state.as_str(), "upgrading" | "rolling-back")
}

/// The version of the service's launch configs: FNV-1a over their JSON (serde_json's maps are
/// sorted, so equal configs give equal versions, on every machine and release).
pub fn version(svc: &Service) -> String {
    let json = serde_json::to_vec(&(&svc.launch_config, &svc.secondary_launch_configs)).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The version a container was made from (`None`: made before versions existed).
pub fn of_container(c: &Container) -> Option<&str> {
    c.extra.get(VERSION).and_then(|v| v.as_str())
}

/// Whether a container was made from another launch config than the service's now (one made
/// before versions existed is, so an upgrade replaces it too).
pub fn stale(c: &Container, current: &str) -> bool {
    of_container(c) != Some(current)
}

/// Whether the upgrade (or rollback) of `svc` is done as observed: no container of another
/// version runs or is wanted running, and as many units of the current version as the scale
/// asks (one, for a global service) run, and are healthy where they are health-checked.
pub fn done(snap: &event_bus::Snapshot, svc: &Service) -> bool {
    let version = version(svc);
    let running = |c: &Container| snap.status(&c.uuid).is_some_and(|st| st.state == "running");
    let mut ready = 0;
    for c in snap.containers_of_service(&svc.uuid) {
        if stale(c, &version) {
            if c.desired_state != "stopped" || running(c) {
                return false;
            }
        } else if c.launch_config_name.is_none()
            && c.desired_state != "stopped"
            && running(c)
            && (c.health_check.is_none()
                || snap.health(&c.uuid).is_some_and(|h| crate::health::is_healthy(&h.health_state)))
        {
            ready += 1;
        }
    }
    let global = svc.launch_config.labels.get(crate::schedule::GLOBAL).is_some_and(|v| v == "true");
    ready >= if global { 1 } else { svc.scale.unwrap_or(1) as usize }
}

/// What `up` does to the services that exist, before planning (shared by `deploy up` and
/// `deploy local up`): keeps what the files cannot express, then with `upgrade` (batch size,
/// interval) begins an upgrade of each service whose launch config changed; without it, says
/// that running containers keep the old config. A service being upgraded cannot be changed; one
/// that was rolled back becomes `active` again when it changes. Returns the upgraded services'
/// names and the notes to print, or what refuses the change.
pub fn prepare(
    current: &std::collections::BTreeMap<String, Service>,
    services: &mut [Service],
    upgrade: Option<(Option<u32>, Option<u64>)>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let (mut upgraded, mut notes) = (Vec::new(), Vec::new());
    // Compose keys the agent does not give Docker yet: said, not dropped silently.
    for s in services.iter() {
        for lc in std::iter::once(&s.launch_config).chain(&s.secondary_launch_configs) {
            let keys = crate::agent::not_applied(lc);
            if !keys.is_empty() {
                let name = lc.name.as_deref().unwrap_or(&s.name);
                notes.push(format!(
                    "note: {name}: {} kept in the desired state but not applied to Docker yet",
                    keys.join(", ")
                ));
            }
        }
    }
    for s in services.iter_mut() {
        let Some(old) = current.get(&s.name) else { continue };
        crate::plan::keep_unexpressed(old, s);
        if version(old) == version(s) {
            continue;
        }
        if old.state == "upgrading" {
            return Err(format!(
                "service {} is being upgraded: finish with --confirm-upgrade or --rollback before changing it again",
                s.name
            ));
        }
        match upgrade {
            Some((batch_size, interval)) => {
                begin(old, s, batch_size, interval)?;
                upgraded.push(s.name.clone());
            }
            None => {
                if s.state == "rolling-back" {
                    s.state = "active".into();
                    s.extra.remove(UPGRADE);
                }
                notes.push(format!(
                    "note: the launch config of {} changed; its running containers keep the old one until `deploy up --upgrade` (new containers use the new one)",
                    s.name
                ));
            }
        }
    }
    Ok((upgraded, notes))
}

/// `deploy up --upgrade`: `new` replaces `old` in batches. The state and the previous launch
/// configs go into `new`; `Err` when `old` is in the middle of an upgrade.
pub fn begin(
    old: &Service,
    new: &mut Service,
    batch_size: Option<u32>,
    interval_ms: Option<u64>,
) -> Result<bool, String> {
    if version(old) == version(new) {
        return Ok(false);
    }
    // A rollback may be followed by a new upgrade at any time (it targets the new config from
    // wherever the rollback got to); an upgrade must be confirmed or rolled back first.
    if old.state == "upgrading" {
        return Err(format!(
            "service {} is being upgraded (state {}): finish with --confirm-upgrade or --rollback first",
            old.name, old.state
        ));
    }
    let (size, interval, start_first) = strategy(new);
    let up = Upgrade {
        previous_launch_config: old.launch_config.clone(),
        previous_secondary_launch_configs: old.secondary_launch_configs.clone(),
        batch_size: batch_size.unwrap_or(size).max(1),
        interval_ms: interval_ms.unwrap_or(interval),
        start_first,
    };
    new.state = "upgrading".into();
    new.extra.insert(UPGRADE.into(), serde_json::to_value(up).expect("serializable"));
    Ok(true)
}

/// `--confirm-upgrade`: the service is `active` again; the old (stopped) units go.
pub fn confirm(svc: &mut Service) -> bool {
    if svc.state != "upgrading" {
        return false;
    }
    svc.state = "active".into();
    svc.extra.remove(UPGRADE);
    true
}

/// `--rollback`: the previous launch configs back; the old units start again, the new go.
pub fn rollback(svc: &mut Service) -> bool {
    let Some(up) = Upgrade::of(svc).filter(|_| svc.state == "upgrading") else { return false };
    svc.launch_config = up.previous_launch_config.clone();
    svc.secondary_launch_configs = up.previous_secondary_launch_configs.clone();
    svc.state = "rolling-back".into();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_launch_config_only() {
        let mut a = Service::new("s", "st", "web");
        a.launch_config.image = "busybox:1".into();
        let mut b = a.clone();
        b.scale = Some(5);
        b.state = "upgrading".into();
        assert_eq!(version(&a), version(&b));
        b.launch_config.image = "busybox:2".into();
        assert_ne!(version(&a), version(&b));
        assert_eq!(version(&a).len(), 16);
    }

    #[test]
    fn keys_docker_does_not_get_are_said() {
        let mut web = Service::new("s", "st", "web");
        web.launch_config.extra.insert("mem_limit".into(), serde_json::json!("512m"));
        web.launch_config.extra.insert("user".into(), serde_json::json!("nobody"));
        let (_, notes) = prepare(&Default::default(), &mut [web], None).unwrap();
        assert_eq!(notes, ["note: web: mem_limit kept in the desired state but not applied to Docker yet"]);
    }

    #[test]
    fn begin_confirm_rollback() {
        let mut old = Service::new("s", "st", "web");
        old.launch_config.image = "busybox:1".into();
        let mut new = old.clone();
        assert_eq!(begin(&old, &mut new, None, None), Ok(false), "nothing changed, nothing to upgrade");
        new.launch_config.image = "busybox:2".into();
        new.extra.insert("upgrade_strategy".into(), serde_json::json!({"batch_size": 1, "start_first": true}));
        assert_eq!(begin(&old, &mut new, None, Some(50)), Ok(true));
        let up = Upgrade::of(&new).unwrap();
        assert_eq!((up.batch_size, up.interval_ms, up.start_first), (1, 50, true));
        assert_eq!(up.previous_launch_config.image, "busybox:1");
        let mut again = new.clone();
        again.launch_config.image = "busybox:3".into();
        assert!(begin(&new, &mut again, None, None).unwrap_err().contains("--confirm-upgrade or --rollback"));
        let mut back = new.clone();
        assert!(rollback(&mut back));
        assert_eq!((back.launch_config.image.as_str(), back.state.as_str()), ("busybox:1", "rolling-back"));
        assert!(confirm(&mut new) && new.state == "active" && Upgrade::of(&new).is_none());
    }
}
