//! The port gate (`LB_PORTS`): the ports a packet must use to concern the data plane at all.
//! Bits are only ever added while the daemon runs, so a draining flow's ports never drop out;
//! a restart rebuilds them from the services and from every flow still in the table.
use std::{collections::BTreeSet, net::SocketAddrV4};

use lb_common::{
    FLOW_F_REPLY, Flow, FlowKey, PORT_BACKEND, PORT_GATE_WORDS, PORT_SERVICE, port_gate_slot,
};

use super::{convert::service_key, plan::Op};
use crate::services::Listener;

pub struct PortGate {
    words: Vec<u64>,
    /// Words changed since the last `flush`.
    dirty: BTreeSet<u32>,
}

impl Default for PortGate {
    fn default() -> Self {
        Self {
            words: vec![0; PORT_GATE_WORDS as usize],
            dirty: BTreeSet::new(),
        }
    }
}

impl PortGate {
    fn add(&mut self, kind: u32, proto: u8, port: u16) {
        let (word, bit) = port_gate_slot(kind, proto, port);
        let w = &mut self.words[word as usize];
        if *w & bit == 0 {
            *w |= bit;
            self.dirty.insert(word);
        }
    }

    /// A service on `listener` and its `backends`.
    pub fn add_service(
        &mut self,
        listener: &Listener,
        backends: impl Iterator<Item = SocketAddrV4>,
    ) {
        let proto = service_key(listener).proto;
        self.add(PORT_SERVICE, proto, listener.port);
        for b in backends {
            self.add(PORT_BACKEND, proto, b.port());
        }
    }

    /// A tracked flow entry: its client side passes on the service port, its reply side on
    /// the backend's.
    pub fn add_flow(&mut self, key: &FlowKey, flow: &Flow) {
        if flow.flags & FLOW_F_REPLY == 0 {
            self.add(PORT_SERVICE, key.proto, u16::from_be(key.dport));
        } else {
            self.add(PORT_BACKEND, key.proto, u16::from_be(key.sport));
        }
    }

    /// The writes of what changed; with `all`, of every word (replacing what an earlier
    /// daemon left).
    pub fn flush(&mut self, all: bool) -> Vec<Op> {
        let words: Vec<u32> = if all {
            (0..PORT_GATE_WORDS).collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        self.dirty.clear();
        words
            .into_iter()
            .map(|w| Op::PutPortWord(w, self.words[w as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Protocol;

    #[test]
    fn bits_are_added_once_and_marked_dirty() {
        let mut g = PortGate::default();
        let l = Listener {
            bind: None,
            port: 10000,
            protocol: Protocol::Tcp,
        };
        g.add_service(&l, ["192.168.1.1:80".parse().unwrap()].into_iter());
        assert_eq!(g.dirty.len(), 2);
        let (w, bit) = port_gate_slot(PORT_SERVICE, 6, 10000);
        assert_ne!(g.words[w as usize] & bit, 0);
        let (w, bit) = port_gate_slot(PORT_BACKEND, 6, 80);
        assert_ne!(g.words[w as usize] & bit, 0);
        let (w, bit) = port_gate_slot(PORT_BACKEND, 17, 80);
        assert_eq!(
            g.words[w as usize] & bit,
            0,
            "UDP 80 is not a TCP backend's"
        );
        g.dirty.clear();
        g.add_service(&l, ["192.168.1.2:80".parse().unwrap()].into_iter());
        assert!(g.dirty.is_empty(), "nothing new");
    }
}
