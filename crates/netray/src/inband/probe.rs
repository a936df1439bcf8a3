//! Probe packets: TTL-limited TCP segments that look, to every box on the
//! path, like one more segment of the traced connection.
//!
//! A probe is a keepalive-style segment of *already acknowledged* data: one
//! byte at a sequence number below the peer's `rcv_nxt`, so the peer drops the
//! byte (it has it already) and answers with an immediate duplicate ACK whose
//! D-SACK block names exactly that byte. Each probe of a trace gets its own
//! sequence number, and the quoted TCP header of an ICMP Time Exceeded carries
//! that sequence number back: it identifies the probe's TTL for both families
//! without touching anything that feeds a flow hash (addresses, ports, IPv6
//! flow label stay those of the connection).
//!
//! Never new data (that could be delivered into the stream), never RST/SYN/FIN.

use std::net::IpAddr;

use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader};
use netray_common::inband::FlowState;

/// Everything a probe copies from the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTemplate {
    /// Our address.
    pub local: IpAddr,
    /// The peer's address.
    pub peer: IpAddr,
    /// Our port.
    pub local_port: u16,
    /// The peer's port.
    pub peer_port: u16,
    /// Acknowledgment number (the peer's next sequence number).
    pub ack: u32,
    /// Sequence numbers below this are acknowledged by the peer.
    pub acked: u32,
    /// Window as we last advertised it.
    pub window: u16,
    /// DSCP + ECN byte (IPv4 TOS / IPv6 traffic class) of the connection.
    pub tos: u8,
    /// IPv6 flow label of the connection (0 for IPv4).
    pub flow_label: u32,
    /// `Some((tsval, tsecr))` when the connection uses TCP timestamps: a peer
    /// that negotiated them may drop segments without (RFC 7323).
    pub timestamps: Option<(u32, u32)>,
}

/// Why a template cannot be made from a flow's state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// No segment from the peer was seen, so its sequence numbers are unknown.
    #[error("no segment of the peer seen yet")]
    NoPeerSegment,
    /// None of our segments was seen, so our window/TOS/timestamps are unknown.
    #[error("no segment of ours seen yet")]
    NoLocalSegment,
    /// The peer has not acknowledged everything we sent: probing now would
    /// look like loss to our own TCP (duplicate ACKs, fast retransmit).
    #[error("data in flight: peer acknowledged {acked:#x}, we sent up to {sent:#x}")]
    InFlight {
        /// The peer's latest acknowledgment number.
        acked: u32,
        /// Our snd_nxt.
        sent: u32,
    },
}

#[cfg(test)]
impl ProbeTemplate {
    /// The template the engine's and the schedule's unit tests trace with:
    /// the peer 198.51.100.7 at ack 5000, probes below 10 000.
    pub(crate) fn example() -> Self {
        ProbeTemplate {
            local: "192.0.2.1".parse().unwrap(),
            peer: "198.51.100.7".parse().unwrap(),
            local_port: 443,
            peer_port: 40000,
            ack: 5000,
            acked: 10_000,
            window: 100,
            tos: 0,
            flow_label: 0,
            timestamps: None,
        }
    }
}

impl ProbeTemplate {
    /// Builds the template from what the kernel programs saw of the flow.
    pub fn from_flow(
        local: IpAddr,
        peer: IpAddr,
        local_port: u16,
        peer_port: u16,
        state: &FlowState,
    ) -> Result<Self, TemplateError> {
        if state.seen & FlowState::SEEN_PEER == 0 || state.seen & FlowState::PEER_ACKED == 0 {
            return Err(TemplateError::NoPeerSegment);
        }
        if state.seen & FlowState::SEEN_LOCAL == 0 {
            return Err(TemplateError::NoLocalSegment);
        }
        if state.peer_ack != state.local_seq_next {
            return Err(TemplateError::InFlight {
                acked: state.peer_ack,
                sent: state.local_seq_next,
            });
        }
        Ok(Self {
            local,
            peer,
            local_port,
            peer_port,
            ack: state.peer_seq_next,
            acked: state.peer_ack,
            window: state.local_window,
            tos: state.local_tos,
            flow_label: state.local_flow_label,
            // Both sides' latest segments carried timestamps: the
            // connection negotiated them (RFC 7323).
            timestamps: state.local_tsval().zip(state.peer_tsval()),
        })
    }

    /// Sequence number of probe number `index` (0-based): one byte each, going
    /// down from the last acknowledged byte.
    pub const fn probe_seq(&self, index: u32) -> u32 {
        self.acked.wrapping_sub(1).wrapping_sub(index)
    }

    /// The IP packet (header included) of a probe with `seq` and `ttl`.
    pub fn packet(&self, seq: u32, ttl: u8) -> Vec<u8> {
        let mut tcp = TcpHeader::new(self.local_port, self.peer_port, seq, self.window);
        tcp.ack = true;
        tcp.acknowledgment_number = self.ack;
        if let Some((tsval, tsecr)) = self.timestamps {
            use etherparse::TcpOptionElement::{Noop, Timestamp};
            // 12 bytes: always fits in the 40 option bytes.
            let _ = tcp.set_options(&[Noop, Noop, Timestamp(tsval, tsecr)]);
        }
        // The byte's value does not matter: the peer already has this byte and
        // discards the copy without looking at it.
        let payload = [0u8; 1];
        let tcp_len = tcp.header_len() + payload.len();
        let mut out = Vec::with_capacity(40 + tcp_len);
        match (self.local, self.peer) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = Ipv4Header::new(
                    tcp_len as u16,
                    ttl,
                    IpNumber::TCP,
                    src.octets(),
                    dst.octets(),
                )
                .expect("a probe is far below the IPv4 size limit");
                ip.dscp = IpDscp::try_new(self.tos >> 2).unwrap_or_default();
                ip.ecn = IpEcn::try_new(self.tos & 3).unwrap_or_default();
                // Linux TCP sets DF (path MTU discovery); so do we.
                ip.dont_fragment = true;
                // Vary the IP ID like the kernel does, so probes don't collide
                // in reassembly caches of middleboxes.
                ip.identification = (seq as u16) ^ (seq >> 16) as u16;
                tcp.checksum = tcp
                    .calc_checksum_ipv4(&ip, &payload)
                    .expect("a probe is far below the IPv4 size limit");
                let _ = ip.write(&mut out);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6Header {
                    traffic_class: self.tos,
                    flow_label: Ipv6FlowLabel::try_new(self.flow_label & 0xf_ffff)
                        .unwrap_or_default(),
                    payload_length: tcp_len as u16,
                    next_header: IpNumber::TCP,
                    hop_limit: ttl,
                    source: src.octets(),
                    destination: dst.octets(),
                };
                tcp.checksum = tcp
                    .calc_checksum_ipv6(&ip, &payload)
                    .expect("a probe is far below the IPv6 size limit");
                let _ = ip.write(&mut out);
            }
            _ => unreachable!("a connection's addresses share one family"),
        }
        let _ = tcp.write(&mut out);
        out.extend_from_slice(&payload);
        out
    }
}

/// SACK blocks (`[left, right)` pairs) in raw TCP option bytes. Malformed or
/// truncated options end the scan; they never panic.
pub fn sack_blocks(options: &[u8]) -> Vec<(u32, u32)> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => break,  // end of options
            1 => i += 1, // NOP
            kind => {
                let Some(&len) = options.get(i + 1) else {
                    break;
                };
                let len = usize::from(len);
                if len < 2 || i + len > options.len() {
                    break;
                }
                if kind == 5 {
                    for block in options[i + 2..i + len].chunks_exact(8) {
                        let left = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
                        let right = u32::from_be_bytes([block[4], block[5], block[6], block[7]]);
                        blocks.push((left, right));
                    }
                }
                i += len;
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn template(local: &str, peer: &str) -> ProbeTemplate {
        ProbeTemplate {
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            local_port: 443,
            peer_port: 51234,
            ack: 0x1000_0000,
            acked: 0x2000_0010,
            window: 502,
            tos: 0b1011_1001, // DSCP 46 (EF), ECN 01
            flow_label: 0xabcde,
            timestamps: Some((111, 222)),
        }
    }

    /// NOP NOP TS(tsval, 0), as Linux sends it, in an options field.
    fn timestamp_options(tsval: u32) -> [u8; netray_common::inband::MAX_TCP_OPTIONS] {
        let mut options = [0; netray_common::inband::MAX_TCP_OPTIONS];
        options[..4].copy_from_slice(&[1, 1, 8, 10]);
        options[4..8].copy_from_slice(&tsval.to_be_bytes());
        options
    }

    fn state() -> FlowState {
        FlowState {
            peer_seq_next: 7,
            peer_ack: 100,
            peer_options: timestamp_options(5),
            peer_options_len: 12,
            local_seq_next: 100,
            local_options: timestamp_options(9),
            local_options_len: 12,
            local_window: 64,
            local_tos: 0,
            seen: FlowState::SEEN_PEER | FlowState::PEER_ACKED | FlowState::SEEN_LOCAL,
            ..FlowState::default()
        }
    }

    #[test]
    fn ipv4_probe_copies_the_connection() {
        let t = template("192.0.2.1", "198.51.100.7");
        let seq = t.probe_seq(5);
        assert_eq!(seq, 0x2000_0010 - 6);
        let bytes = t.packet(seq, 3);
        let packet = SlicedPacket::from_ip(&bytes).unwrap();
        let Some(NetSlice::Ipv4(ip)) = packet.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(h.ttl(), 3);
        assert_eq!(h.source_addr().to_string(), "192.0.2.1");
        assert_eq!(h.destination_addr().to_string(), "198.51.100.7");
        assert_eq!(h.dcp().value(), 46);
        assert_eq!(h.ecn().value(), 1);
        assert!(h.dont_fragment());
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
            panic!("not TCP")
        };
        assert_eq!(tcp.source_port(), 443);
        assert_eq!(tcp.destination_port(), 51234);
        assert_eq!(tcp.sequence_number(), seq);
        assert_eq!(tcp.acknowledgment_number(), 0x1000_0000);
        assert!(tcp.ack() && !tcp.syn() && !tcp.fin() && !tcp.rst() && !tcp.psh());
        assert_eq!(tcp.window_size(), 502);
        assert_eq!(tcp.payload().len(), 1);
        let sum = tcp
            .to_header()
            .calc_checksum_ipv4(&h.to_header(), tcp.payload())
            .unwrap();
        assert_eq!(tcp.checksum(), sum);
        let options: Vec<_> = tcp.options_iterator().map(Result::unwrap).collect();
        assert!(options.contains(&etherparse::TcpOptionElement::Timestamp(111, 222)));
    }

    #[test]
    fn ipv6_probe_keeps_flow_label_and_class() {
        let t = template("2001:db8::1", "2001:db8::2");
        let bytes = t.packet(t.probe_seq(0), 7);
        let packet = SlicedPacket::from_ip(&bytes).unwrap();
        let Some(NetSlice::Ipv6(ip)) = packet.net else {
            panic!("not IPv6")
        };
        let h = ip.header();
        assert_eq!(h.hop_limit(), 7);
        assert_eq!(h.flow_label().value(), 0xabcde);
        assert_eq!(h.traffic_class(), 0b1011_1001);
        let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
            panic!("not TCP")
        };
        assert_eq!(tcp.sequence_number(), 0x2000_0010 - 1);
        let sum = tcp
            .to_header()
            .calc_checksum_ipv6(&h.to_header(), tcp.payload())
            .unwrap();
        assert_eq!(tcp.checksum(), sum);
    }

    #[test]
    fn no_timestamp_option_when_the_connection_has_none() {
        let mut t = template("192.0.2.1", "198.51.100.7");
        t.timestamps = None;
        let bytes = t.packet(1, 1);
        let packet = SlicedPacket::from_ip(&bytes).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
            panic!("not TCP")
        };
        assert_eq!(tcp.options().len(), 0);
    }

    #[test]
    fn template_needs_both_directions_and_nothing_in_flight() {
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let ok = ProbeTemplate::from_flow(a, b, 1, 2, &state()).unwrap();
        assert_eq!(ok.ack, 7);
        assert_eq!(ok.acked, 100);
        assert_eq!(ok.timestamps, Some((9, 5)));

        let mut s = state();
        s.seen &= !FlowState::SEEN_PEER;
        assert_eq!(
            ProbeTemplate::from_flow(a, b, 1, 2, &s),
            Err(TemplateError::NoPeerSegment)
        );
        let mut s = state();
        s.local_seq_next = 150;
        assert!(matches!(
            ProbeTemplate::from_flow(a, b, 1, 2, &s),
            Err(TemplateError::InFlight { .. })
        ));
        let mut s = state();
        s.peer_options_len = 0;
        assert_eq!(
            ProbeTemplate::from_flow(a, b, 1, 2, &s).unwrap().timestamps,
            None
        );
    }

    #[test]
    fn parses_sack_blocks_and_survives_garbage() {
        // NOP NOP TS(10) NOP NOP SACK(2 blocks)
        let mut opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 18];
        opts.extend_from_slice(&100u32.to_be_bytes());
        opts.extend_from_slice(&101u32.to_be_bytes());
        opts.extend_from_slice(&200u32.to_be_bytes());
        opts.extend_from_slice(&300u32.to_be_bytes());
        assert_eq!(sack_blocks(&opts), vec![(100, 101), (200, 300)]);
        assert!(sack_blocks(&[5]).is_empty());
        assert!(sack_blocks(&[5, 1]).is_empty());
        assert!(sack_blocks(&[5, 40, 0, 0]).is_empty());
        assert!(sack_blocks(&[]).is_empty());
        // A SACK option whose length is not a multiple of 8 keeps whole blocks only.
        let mut odd = vec![5, 13];
        odd.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 10, 7, 7, 7]);
        assert_eq!(sack_blocks(&odd), vec![(9, 10)]);
    }
}
