//! Why a load balancer configuration is refused, and what can go wrong driving HAProxy.

/// A refused `lb_config`. Every variant names the input it is about (rule index, field, port,
/// certificate) so the message can be acted on without reading the code. Certificate contents,
/// private keys in particular, never appear in these messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("load balancer service {service:?} not found in the state")]
    ServiceNotFound { service: String },
    #[error("service {service:?} is not a load balancer: it has no lb_config with port_rules")]
    NotALoadBalancer { service: String },
    #[error("lb_config.port_rules[{rule}].{field}: {reason}")]
    InvalidField { rule: usize, field: &'static str, reason: String },
    #[error("lb_config.port_rules[{rule}]: protocol udp is not supported by HAProxy (only http, https, tcp, tls and sni are)")]
    UdpNotSupported { rule: usize },
    #[error("lb_config.port_rules[{rule}] uses protocol {protocol} on source port {port}, but port_rules[{first}] uses {first_protocol} there: one port has one protocol")]
    MixedProtocols { port: u16, first: usize, first_protocol: &'static str, rule: usize, protocol: &'static str },
    #[error("lb_config.port_rules[{rule}] overlaps port_rules[{first}]: both match {matcher} on source port {port} with the same priority ({priority}); give one of them a different priority")]
    OverlappingRules { port: u16, first: usize, rule: usize, matcher: String, priority: String },
    #[error("lb_config.{field}: no certificate {name:?} in the state")]
    CertificateNotFound { field: String, name: String },
    #[error("lb_config.{field}: certificate {name:?}: {reason}")]
    BadCertificate { field: String, name: String, reason: String },
    #[error("lb_config.port_rules[{rule}]: protocol {protocol} on source port {port} terminates TLS and needs a certificate: set lb_config.certs or lb_config.default_cert")]
    NoCertificate { rule: usize, port: u16, protocol: &'static str },
    #[error(
        "lb_config.port_rules[{rule}].source_port {port}: {addr} is already in use by another process on this host"
    )]
    PortInUse { rule: usize, port: u16, addr: String },
    #[error("lb_config.stickiness_policy.{field}: {reason}")]
    Stickiness { field: &'static str, reason: String },
    #[error("lb_config.config line {line}: {reason}")]
    CustomConfig { line: usize, reason: String },
    #[error("HAProxy refused the generated configuration (haproxy -c):\n{output}")]
    Refused { output: String },
}

/// Driving the HAProxy process went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HaproxyError {
    #[error("starting {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("HAProxy master CLI {socket}: {reason}")]
    Cli { socket: String, reason: String },
    #[error("HAProxy command `{command}` failed: {reply}")]
    Command { command: String, reply: String },
    #[error("HAProxy reload failed (the previous worker keeps serving): {reason}")]
    Reload { reason: String },
    #[error("HAProxy exited: {status}")]
    Exited { status: String },
}
