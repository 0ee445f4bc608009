//! A 3-node JetStream cluster on loopback ports: three `nats-server` processes with routes to
//! each other, one store directory each; nodes can be SIGKILLed one at a time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{binary, free_port, wait_for_port};

/// One node: client port, cluster (route) port, store directory, process.
struct Node {
    port: u16,
    route_port: u16,
    /// JetStream store directory of this node.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Three nats-servers forming the JetStream cluster `egw-test`.
pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts three nodes, or `None` when the binary is missing (see [`binary`]). The JetStream
    /// meta leader is elected a few seconds later; clients retry until then.
    pub fn start() -> Option<NatsCluster> {
        let binary = binary()?;
        let nodes = (0..3)
            .map(|_| Node {
                port: free_port(),
                route_port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { binary, nodes };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for node in &cluster.nodes {
            wait_for_port(node.port);
        }
        Some(cluster)
    }

    /// `nats://127.0.0.1:P1,nats://127.0.0.1:P2,nats://127.0.0.1:P3`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (same ports and store directory) after [`NatsCluster::kill`].
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        wait_for_port(self.nodes[i].port);
    }

    /// The node named `name` (`node0`..`node2`, as `-n` names them).
    pub fn index_of(name: &str) -> Option<usize> {
        name.strip_prefix("node")?.parse().ok()
    }

    fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.route_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &self.nodes[i];
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &node.port.to_string()])
            .args(["-n", &format!("node{i}"), "--cluster_name", "egw-test"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.route_port),
                "--routes",
                &routes,
                "-sd",
            ])
            .arg(node.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.nodes[i].child = Some(child);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
