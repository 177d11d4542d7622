//! Test support: the Calico-style agent topology in network namespaces (`netns`), traffic
//! from inside a namespace (`client`), packet builders (`packets`), a Marathon stand-in, and a
//! reference model of the data plane (`model`) with the differential fuzzer that uses it (`fuzz`).
pub mod client;
pub mod fuzz;
pub mod lb;
pub mod marathon_standin;
pub mod model;
pub mod netns;
pub mod packets;

/// Byte `i` of every `/bytes/N` body served by `lbt-server`.
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}
