//! Builders for fixture environments: hosts, stacks, services and containers with IPs.

use crate::keys::{Document, Record};
use crate::model::*;

pub fn host(uuid: &str, name: &str, agent_ip: &str) -> Host {
    Host::new(uuid, name, agent_ip)
}

pub fn stack(uuid: &str, name: &str) -> Stack {
    Stack::new(uuid, name)
}

pub fn service(uuid: &str, stack_uuid: &str, name: &str) -> Service {
    let mut s = Service::new(uuid, stack_uuid, name);
    s.launch_config.image = "local/busybox:1".into();
    s
}

pub fn container(uuid: &str, name: &str, service_uuid: &str, stack_uuid: &str, host_uuid: &str, ip: &str) -> Container {
    let index = name.rsplit('-').next().filter(|s| s.chars().all(|c| c.is_ascii_digit())).map(str::to_string);
    Container {
        uuid: uuid.into(),
        name: name.into(),
        service_uuid: Some(service_uuid.into()),
        stack_uuid: Some(stack_uuid.into()),
        launch_config_name: None,
        create_index: index.as_deref().and_then(|i| i.parse().ok()),
        service_index: index,
        host_uuid: Some(host_uuid.into()),
        primary_ip: Some(ip.into()),
        ips: vec![ip.into()],
        primary_mac_address: None,
        hostname: None,
        image: Some("local/busybox:1".into()),
        labels: Labels::new(),
        ports: Vec::new(),
        dns: Vec::new(),
        dns_search: Vec::new(),
        health_check: None,
        memory_reservation: None,
        milli_cpu_reservation: None,
        network_uuid: None,
        network_from_container_uuid: None,
        links: Default::default(),
        desired_state: "running".into(),
        system: false,
        environment_uuid: String::new(),
        extra: Extra::new(),
    }
}

pub fn status(container_uuid: &str, host_uuid: &str, state: &str) -> ContainerStatus {
    ContainerStatus {
        uuid: container_uuid.into(),
        host_uuid: host_uuid.into(),
        state: state.into(),
        external_id: None,
        start_count: 1,
        exit_code: None,
        error: None,
        extra: Extra::new(),
    }
}

/// A whole environment of a given size, deterministic: host `h<i>` owns subnet `10.42.<i>.0/24`;
/// stack `st<j>` is named `stack<j>`; service `sv<j>-<k>` is `svc<k>`; containers round-robin over hosts.
#[derive(Debug, Clone, Copy)]
pub struct EnvironmentShape {
    pub hosts: usize,
    pub stacks: usize,
    pub services: usize,
    pub containers: usize,
}

impl EnvironmentShape {
    /// The size the foundation benchmark uses: 20 hosts, 50 stacks, 500 services, 5,000 containers.
    pub const BENCH: EnvironmentShape = EnvironmentShape { hosts: 20, stacks: 50, services: 500, containers: 5000 };

    pub fn build(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.hosts + self.stacks + self.services + self.containers);
        for h in 0..self.hosts {
            let mut d = host(&format!("h{h}"), &format!("host-{h}"), &format!("127.0.1.{}", h + 1));
            d.subnet = Some(format!("10.42.{h}.0/24"));
            out.push(d.into_record());
        }
        for s in 0..self.stacks {
            out.push(stack(&format!("st{s}"), &format!("stack{s}")).into_record());
        }
        let per_stack = self.services.div_ceil(self.stacks.max(1));
        let services: Vec<(String, String, String, String)> = (0..self.services)
            .map(|i| {
                let (s, k) = (i / per_stack, i % per_stack);
                (format!("sv{s}-{k}"), format!("st{s}"), format!("stack{s}"), format!("svc{k}"))
            })
            .collect();
        for (uuid, stack_uuid, _, name) in &services {
            out.push(service(uuid, stack_uuid, name).into_record());
        }
        let mut per_host = vec![0usize; self.hosts.max(1)];
        for c in 0..self.containers {
            let (sv, st, stack_name, svc_name) = &services[c % services.len().max(1)];
            let h = c % self.hosts.max(1);
            let idx = per_host[h];
            per_host[h] += 1;
            let n = c / services.len().max(1) + 1;
            // 250 addresses per host subnet; a larger shape spills into 10.43.<h>.0 and up.
            let ip = format!("10.{}.{}.{}", 42 + idx / 250, h, idx % 250 + 2);
            out.push(
                container(&format!("c{c}"), &format!("{stack_name}-{svc_name}-{n}"), sv, st, &format!("h{h}"), &ip)
                    .into_record(),
            );
        }
        out
    }
}
