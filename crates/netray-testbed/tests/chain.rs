//! TTL-limited UDP probes walk the chain hop by hop (a traceroute), with and
//! without a silent router.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use netray_testbed::{Family, ProbeReply, RouterBehavior, Side, Topology};

/// Nothing listens there, so the server answers with port unreachable.
const PORT: u16 = 33434;
const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn ttl_expires_at_each_router_then_reaches_server() -> Result<()> {
    let tb = Topology::chain(5).build()?;
    for family in [Family::V4, Family::V6] {
        let dst = SocketAddr::new(tb.server_addr(family), PORT);
        for k in 1..=5u8 {
            let reply = tb.client().udp_probe(dst, k, TIMEOUT)?;
            let expected = tb.router_addr(k.into(), Side::Client, family);
            assert_eq!(
                reply.time_exceeded_from(),
                Some(expected),
                "{family:?} ttl {k}: {reply:?}"
            );
        }
        let reply = tb.client().udp_probe(dst, 6, TIMEOUT)?;
        assert_eq!(
            reply.port_unreachable_from(),
            Some(tb.server_addr(family)),
            "{family:?} ttl 6: {reply:?}"
        );
    }
    Ok(())
}

#[test]
fn icmp_errors_are_not_rate_limited() -> Result<()> {
    // Linux normally allows a burst of ~6 errors per peer and then one per
    // second; testbed namespaces turn that off so probe results are exact.
    let tb = Topology::chain(1).build()?;
    for family in [Family::V4, Family::V6] {
        let dst = SocketAddr::new(tb.server_addr(family), PORT);
        for i in 0..30 {
            let reply = tb.client().udp_probe(dst, 1, TIMEOUT)?;
            assert_eq!(
                reply.time_exceeded_from(),
                Some(tb.router_addr(1, Side::Client, family)),
                "{family:?} #{i}"
            );
        }
    }
    Ok(())
}

#[test]
fn silent_router_sends_no_icmp_but_forwards() -> Result<()> {
    let tb = Topology::chain(3)
        .router(2, RouterBehavior::Silent)
        .build()?;
    for family in [Family::V4, Family::V6] {
        let dst = SocketAddr::new(tb.server_addr(family), PORT);
        let hop = |ttl| tb.client().udp_probe(dst, ttl, TIMEOUT);
        assert_eq!(
            hop(1)?.time_exceeded_from(),
            Some(tb.router_addr(1, Side::Client, family))
        );
        // Replies arrive within milliseconds here, so 1 s of silence is plenty.
        let silent = tb.client().udp_probe(dst, 2, Duration::from_secs(1))?;
        assert_eq!(
            silent,
            ProbeReply::Timeout,
            "{family:?}: router 2 must stay silent"
        );
        assert_eq!(
            hop(3)?.time_exceeded_from(),
            Some(tb.router_addr(3, Side::Client, family))
        );
        assert_eq!(
            hop(4)?.port_unreachable_from(),
            Some(tb.server_addr(family))
        );
    }
    Ok(())
}

#[test]
fn direct_link_without_routers() -> Result<()> {
    let tb = Topology::chain(0).build()?;
    assert_eq!(tb.client_addr(Family::V4).to_string(), "10.0.0.1");
    assert_eq!(tb.server_addr(Family::V6).to_string(), "fd00::2");
    let dst = SocketAddr::new(tb.server_addr(Family::V6), PORT);
    let reply = tb.client().udp_probe(dst, 1, TIMEOUT)?;
    assert_eq!(
        reply.port_unreachable_from(),
        Some(tb.server_addr(Family::V6))
    );
    Ok(())
}
