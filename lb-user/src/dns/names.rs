//! The names Mesos-DNS and DC/OS's dcos-net give Marathon tasks, rule for rule: the task name
//! from the app id, RFC 1123 label cleaning, the per-task canonical name and the SRV names.
//!
//! Reference: Mesos-DNS `records/labels` (`RFC1123`, `DomainFrag`) and `records/generator.go`
//! (`hashString`, `slaveIDTail`, `taskContextRecord`); dcos-net `dcos_dns_mesos` (`format_name`).
use data_encoding::{Encoding, Specification};
use sha1::{Digest, Sha1};

/// Marathon's framework name, the middle label of every task name (`nginx.marathon.mesos`).
pub const FRAMEWORK: &str = "marathon";

/// dcos-net's zone for task names (`nginx.marathon.containerip.dcos.thisdcos.directory`).
pub const DCOS_DOMAIN: &str = "dcos.thisdcos.directory";

/// The longest label DNS allows, and Mesos-DNS's cut for RFC 1123 labels.
const MAX_LABEL: usize = 63;

/// The Mesos task name Marathon gives an app's tasks: the app id's path segments reversed and
/// joined with `.` (`/prod/web` → `web.prod`).
pub fn task_name(app_id: &str) -> String {
    let segments: Vec<&str> = app_id.split('/').filter(|s| !s.is_empty()).collect();
    segments.into_iter().rev().collect::<Vec<_>>().join(".")
}

/// Mesos-DNS's `RFC1123` label function (its default): lowercase, keep `a-z0-9`, `-` `.` `_`
/// become `-`, anything else is dropped; leading and trailing `-` trimmed; cut at 63.
pub fn label(name: &str) -> String {
    let mapped: Vec<u8> = name
        .bytes()
        .filter_map(|b| match b {
            b'A'..=b'Z' => Some(b.to_ascii_lowercase()),
            b'a'..=b'z' | b'0'..=b'9' => Some(b),
            b'-' | b'.' | b'_' => Some(b'-'),
            _ => None,
        })
        .collect();
    let out = trim_cut(&mapped, MAX_LABEL);
    // Only ASCII was kept.
    String::from_utf8(out).expect("ASCII")
}

/// Mesos-DNS's `trimCut` with `-` as both cut sets: trim the left, cut at `max`, trim the
/// right; when that trim lost characters, refill from what follows the cut (its leading `-`
/// skipped) up to `max`. The refill is not trimmed again, as in Mesos-DNS.
fn trim_cut(label: &[u8], max: usize) -> Vec<u8> {
    let start = label.iter().position(|&b| b != b'-').unwrap_or(label.len());
    let trim = &label[start..];
    let size = trim.len().min(max);
    let mut head: Vec<u8> = trim[..size].to_vec();
    while head.last() == Some(&b'-') {
        head.pop();
    }
    if head.len() == size {
        return head;
    }
    let rest = &trim[size..];
    let skip = rest.iter().position(|&b| b != b'-').unwrap_or(rest.len());
    let tail = &rest[skip..];
    let room = size - head.len();
    head.extend_from_slice(&tail[..tail.len().min(room)]);
    head
}

/// Mesos-DNS's `DomainFrag`: each `.`-separated part cleaned as a label, empty ones dropped,
/// joined with `.` again (`web.prod` stays `web.prod`, `pod_123$abc` becomes `pod-123abc`).
pub fn domain_frag(name: &str) -> String {
    name.split('.')
        .map(label)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// zbase32 (Zooko's human-oriented base32), as Mesos-DNS encodes task id hashes.
fn zbase32() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("ybndrfg8ejkmcpqxot1uwisza345h769");
    spec.encoding().expect("a valid base32 alphabet")
}

/// Mesos-DNS's `hashString`: the first five characters of zbase32(sha1(task id)).
pub fn task_hash(task_id: &str) -> String {
    let digest = Sha1::digest(task_id.as_bytes());
    let mut s = zbase32().encode(&digest);
    s.truncate(5);
    s
}

/// Mesos-DNS's `slaveIDTail`: the agent id's last `-` field, lowercased (`…-S3` → `s3`).
pub fn agent_tail(agent_id: &str) -> String {
    agent_id
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The names of one app's tasks, relative to nothing yet: labels only, no domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppNames {
    /// The cleaned task name, one label (`web-prod`): what every Mesos-DNS name is built on.
    pub label: String,
    /// The uncleaned dotted form, each part cleaned (`web.prod`); equal to `label` for apps at
    /// the root of Marathon's tree.
    pub dotted: String,
}

impl AppNames {
    /// `None` when nothing of the id survives cleaning (an id of only odd characters).
    pub fn of(app_id: &str) -> Option<Self> {
        let name = task_name(app_id);
        let label = label(&name);
        if label.is_empty() {
            return None;
        }
        Some(Self {
            dotted: domain_frag(&name),
            label,
        })
    }

    /// `<name>.marathon.<domain>` for each form of the name (one or two names).
    pub fn hosts(&self, domain: &str) -> Vec<String> {
        let mut v = vec![format!("{}.{FRAMEWORK}.{domain}", self.label)];
        if self.dotted != self.label {
            v.push(format!("{}.{FRAMEWORK}.{domain}", self.dotted));
        }
        v
    }

    /// `<name>.marathon.slave.<domain>`: the agents' addresses.
    pub fn slave_host(&self, domain: &str) -> String {
        format!("{}.{FRAMEWORK}.slave.{domain}", self.label)
    }

    /// The per-task canonical name `<name>-<hash>-<agent>.marathon.<domain>`.
    pub fn canonical(&self, task_id: &str, agent_id: &str, domain: &str) -> String {
        format!(
            "{}-{}-{}.{FRAMEWORK}.{domain}",
            self.label,
            task_hash(task_id),
            agent_tail(agent_id)
        )
    }

    /// The canonical name under `.slave.`: `<name>-<hash>-<agent>.marathon.slave.<domain>`.
    pub fn canonical_slave(&self, task_id: &str, agent_id: &str, domain: &str) -> String {
        self.canonical(task_id, agent_id, &format!("slave.{domain}"))
    }

    /// `_<name>._<proto>.marathon.<domain>` (`proto` is `tcp` or `udp`).
    pub fn srv(&self, proto: &str, domain: &str) -> String {
        format!("_{}._{proto}.{FRAMEWORK}.{domain}", self.label)
    }

    /// dcos-net's `<name>.marathon.<kind>.dcos.thisdcos.directory`, `kind` one of
    /// `containerip`, `agentip`, `autoip`.
    pub fn dcos(&self, kind: &str) -> String {
        format!("{}.{FRAMEWORK}.{kind}.{DCOS_DOMAIN}", self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mesos-DNS's own table for `RFC1123` (records/labels/labels_test.go), every case.
    #[test]
    fn labels_as_mesos_dns_cleans_them() {
        for (input, want) in [
            ("", ""),
            ("a", "a"),
            ("-", ""),
            ("a---", "a"),
            ("---a---", "a"),
            ("---a---b", "a---b"),
            ("a.b.c.d.e", "a-b-c-d-e"),
            ("a.c.d_de.", "a-c-d-de"),
            ("abc123", "abc123"),
            ("-abc123", "abc123"),
            ("abc123-", "abc123"),
            ("abc-123", "abc-123"),
            ("abc--123", "abc--123"),
            ("r29f.dev.angrypigs", "r29f-dev-angrypigs"),
            (
                "hello----------------------------------------------------------f",
                "hellof",
            ),
            ("4abc123", "4abc123"),
            ("-4abc123", "4abc123"),
            (
                "89fdgsf---gs7-fgs--d7fddg-123",
                "89fdgsf---gs7-fgs--d7fddg-123",
            ),
            (
                "89fdgsf---gs7-fgs--d7fddg---123",
                "89fdgsf---gs7-fgs--d7fddg---123",
            ),
            ("89fdgsf---gs7-fgs--d7fddg-", "89fdgsf---gs7-fgs--d7fddg"),
            (
                "fd%gsf---gs7-f$gs--d7fddg-123",
                "fdgsf---gs7-fgs--d7fddg-123",
            ),
            (
                "fd%gsf---gs7-f$gs--d7fddg123456789012345678901234567890123456789-123",
                "fdgsf---gs7-fgs--d7fddg1234567890123456789012345678901234567891",
            ),
            (
                "$$fdgsf---gs7-fgs--d7fddg123456789012345678901234567890123456789-123",
                "fdgsf---gs7-fgs--d7fddg1234567890123456789012345678901234567891",
            ),
            (
                "%%fdgsf---gs7-fgs--d7fddg123456789012345678901234567890123456789---123",
                "fdgsf---gs7-fgs--d7fddg1234567890123456789012345678901234567891",
            ),
            (
                "##fdgsf---gs7-fgs--d7fddg123456789012345678901234567890123456789-",
                "fdgsf---gs7-fgs--d7fddg123456789012345678901234567890123456789",
            ),
            (
                "hello--------------------------------------------------------f",
                "hello--------------------------------------------------------f",
            ),
            (
                "chronos with a space AND MIXED CASE-2.0.1",
                "chronoswithaspaceandmixedcase-2-0-1",
            ),
        ] {
            assert_eq!(label(input), want, "label({input:?})");
            assert!(label(input).len() <= 63);
        }
    }

    /// Mesos-DNS's `DomainFrag` table (records/labels/labels_test.go) under RFC 1123.
    #[test]
    fn domain_fragments_as_mesos_dns_cleans_them() {
        for (input, want) in [
            ("", ""),
            (".", ""),
            ("..", ""),
            ("a.c", "a.c"),
            (".a.c", "a.c"),
            ("a..c", "a.c"),
            ("ab.cd.efg", "ab.cd.efg"),
            ("space space.com", "spacespace.com"),
            ("blah-dash.com", "blah-dash.com"),
            ("not$1234.com", "not1234.com"),
            ("(@ host . com", "host.com"),
            ("MiXeDcase.CoM", "mixedcase.com"),
            (
                "pod_123$abc.marathon-0.6.0-dev.mesos",
                "pod-123abc.marathon-0.6.0-dev.mesos",
            ),
        ] {
            assert_eq!(domain_frag(input), want, "domain_frag({input:?})");
        }
    }

    /// Mesos-DNS's `TestHashString` and the canonical names of its `fake.json` tasks
    /// (`liquor-store-4dfjd-0`, `liquor-store-zasmd-1`, `car-store-zinaz-0`).
    #[test]
    fn task_hashes_as_mesos_dns_computes_them() {
        assert_eq!(task_hash("test"), "iffe9");
        assert_eq!(
            task_hash("liquor-store.b8db9f73-562f-11e4-a088-c20493233aa5"),
            "4dfjd"
        );
        assert_eq!(
            task_hash("liquor-store.b71166c1-562f-11e4-a088-c20493233aa5"),
            "zasmd"
        );
        assert_eq!(
            task_hash("car-store.43758382-562f-11e4-a088-c20493233aa5"),
            "zinaz"
        );
        assert_eq!(agent_tail("20140803-125133-3041283216-5050-2410-0"), "0");
        assert_eq!(agent_tail("0f4c7b3e-6a51-4d4c-b3f4-1f2f0f6a9d11-S2"), "s2");
        let n = AppNames::of("/liquor-store").unwrap();
        assert_eq!(
            n.canonical(
                "liquor-store.b8db9f73-562f-11e4-a088-c20493233aa5",
                "20140803-125133-3041283216-5050-2410-0",
                "mesos"
            ),
            "liquor-store-4dfjd-0.marathon.mesos"
        );
        assert_eq!(
            n.canonical_slave(
                "car-store.43758382-562f-11e4-a088-c20493233aa5",
                "20140803-125133-3041283216-5050-2410-0",
                "mesos"
            ),
            "liquor-store-zinaz-0.marathon.slave.mesos"
        );
    }

    #[test]
    fn app_ids_become_task_names() {
        assert_eq!(task_name("/prod/web"), "web.prod");
        assert_eq!(task_name("/nginx"), "nginx");
        assert_eq!(task_name("/a/b/c"), "c.b.a");
        let n = AppNames::of("/prod/web").unwrap();
        assert_eq!(
            (n.label.as_str(), n.dotted.as_str()),
            ("web-prod", "web.prod")
        );
        assert_eq!(
            n.hosts("mesos"),
            vec!["web-prod.marathon.mesos", "web.prod.marathon.mesos"]
        );
        assert_eq!(n.slave_host("mesos"), "web-prod.marathon.slave.mesos");
        assert_eq!(n.srv("tcp", "mesos"), "_web-prod._tcp.marathon.mesos");
        assert_eq!(
            n.dcos("containerip"),
            "web-prod.marathon.containerip.dcos.thisdcos.directory"
        );
        // Groups with odd characters: cleaned per label in the dotted form, as one label in
        // the other.
        let n = AppNames::of("/My_Team/API.v2").unwrap();
        assert_eq!(n.label, "api-v2-my-team");
        assert_eq!(n.dotted, "api.v2.my-team");
        assert_eq!(AppNames::of("/nginx").unwrap().hosts("mesos").len(), 1);
        assert_eq!(AppNames::of("/$$$"), None);
        // Long names are cut at 63 characters (a DNS label's limit).
        let long = format!("/{}", "x".repeat(80));
        assert_eq!(AppNames::of(&long).unwrap().label.len(), 63);
    }
}
