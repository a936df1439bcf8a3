//! pcapng writer (`-w FILE.pcapng`, `-w -` for stdout) on top of the
//! `pcap-file` crate.
//!
//! Layout: one Section Header Block, then one Interface Description Block
//! per (ifindex, name) the first time a packet from it is written
//! (pcapng allows IDBs anywhere before their first use, which lets a
//! capture pick up interfaces as they appear), then Enhanced Packet Blocks.
//! Timestamps are in nanoseconds (`if_tsresol` = 9). Each EPB carries the
//! direction in its `epb_flags` option (inbound = 1, outbound = 2, 0 when
//! unknown).
//!
//! The section header and interface blocks go through `pcap-file`; the
//! Enhanced Packet Blocks, one per packet, are encoded here straight into
//! the buffered writer: `pcap-file`'s block type owns an options `Vec`,
//! an allocation per packet on the capture's hottest path. The tests read
//! the result back with `pcap-file`'s reader (and the capture tests with
//! tshark).

use std::borrow::Cow;
use std::io::{self, Write};

use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::{DataLink, Endianness, PcapError};

use super::{Direction, PacketRecord};

/// `epb_flags` direction bits for an inbound packet.
pub const EPB_FLAG_INBOUND: u32 = 1;
/// `epb_flags` direction bits for an outbound packet.
pub const EPB_FLAG_OUTBOUND: u32 = 2;

/// Converts `pcap-file` errors to I/O errors so that callers handle one
/// error type (and can spot a closed pipe).
fn io_err(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// pcapng block type of an Enhanced Packet Block.
const EPB_TYPE: u32 = 6;
/// `epb_flags` option code.
const OPT_EPB_FLAGS: u16 = 2;

/// Streams [`PacketRecord`]s into a pcapng section.
pub struct PcapNgSink<W: Write> {
    /// The underlying block writer.
    writer: PcapNgWriter<W>,
    /// (ifindex, name) of each IDB written, in order: the position is the
    /// interface id. A handful of entries: a scan beats hashing a name.
    interfaces: Vec<(u32, String)>,
    /// Snaplen recorded in each IDB and enforced on the data.
    snaplen: u32,
    /// Flush after every packet (for pipes, so that readers such as
    /// `wireshark -k -i -` see packets as they arrive).
    flush_each: bool,
}

impl<W: Write> PcapNgSink<W> {
    /// Writes the Section Header Block. `snaplen` 0 means unlimited.
    pub fn new(writer: W, snaplen: u32, flush_each: bool) -> io::Result<Self> {
        let shb = SectionHeaderBlock {
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "netray {}",
                env!("CARGO_PKG_VERSION")
            )))],
            // Native byte order: the packet blocks are encoded with
            // `to_ne_bytes` (readers handle either order).
            endianness: Endianness::native(),
            ..Default::default()
        };
        let mut w = Self {
            writer: PcapNgWriter::with_section_header(writer, shb).map_err(io_err)?,
            interfaces: Vec::new(),
            snaplen,
            flush_each,
        };
        if flush_each {
            w.writer.get_mut().flush()?;
        }
        Ok(w)
    }

    /// Declares an interface up front (optional: [`Self::write`] declares
    /// unknown interfaces itself). Returns its interface id.
    pub fn add_interface(&mut self, ifindex: u32, name: &str) -> io::Result<u32> {
        if let Some(id) = self
            .interfaces
            .iter()
            .position(|(index, known)| *index == ifindex && known == name)
        {
            return u32::try_from(id).map_err(io::Error::other);
        }
        let id = u32::try_from(self.interfaces.len()).map_err(io::Error::other)?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: self.snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.writer.write_pcapng_block(idb).map_err(io_err)?;
        self.interfaces.push((ifindex, name.to_string()));
        Ok(id)
    }

    /// Writes one packet (an EPB), declaring its interface if needed.
    pub fn write(&mut self, rec: &PacketRecord<'_>) -> io::Result<()> {
        let id = self.add_interface(rec.ifindex, &rec.iface)?;
        // The capture already cuts at the snaplen; cut again so that the
        // file never contradicts its own IDB.
        let cap = match self.snaplen {
            0 => rec.data.len(),
            s => rec.data.len().min(s as usize),
        };
        let data = &rec.data[..cap];
        let flags = match rec.direction {
            Direction::Ingress => EPB_FLAG_INBOUND,
            Direction::Egress => EPB_FLAG_OUTBOUND,
            // pcapng's "information not available".
            Direction::Unknown => 0,
        };
        let ns = rec.ts_ns;
        // A wire length below the captured length would be invalid.
        let original_len = rec.wire_len.max(cap as u32);
        let padding = (4 - cap % 4) % 4;
        // Fixed fields (28) + data + padding + epb_flags (8) +
        // opt_endofopt (4) + trailing length (4).
        let total = u32::try_from(28 + cap + padding + 16).map_err(io::Error::other)?;
        let mut head = [0u8; 28];
        for (slot, value) in head.chunks_exact_mut(4).zip([
            EPB_TYPE,
            total,
            id,
            (ns >> 32) as u32,
            ns as u32,
            cap as u32,
            original_len,
        ]) {
            slot.copy_from_slice(&value.to_ne_bytes());
        }
        let mut tail = [0u8; 3 + 16];
        let tail_len = padding + 16;
        let options = &mut tail[padding..tail_len];
        options[0..2].copy_from_slice(&OPT_EPB_FLAGS.to_ne_bytes());
        options[2..4].copy_from_slice(&4u16.to_ne_bytes());
        options[4..8].copy_from_slice(&flags.to_ne_bytes());
        // options[8..12] stays zero: opt_endofopt.
        options[12..16].copy_from_slice(&total.to_ne_bytes());
        let out = self.writer.get_mut();
        out.write_all(&head)?;
        out.write_all(data)?;
        out.write_all(&tail[..tail_len])?;
        if self.flush_each {
            self.writer.get_mut().flush()?;
        }
        Ok(())
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().flush()
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.writer.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption};

    #[test]
    fn round_trip_with_pcap_file_reader() {
        let mut sink = PcapNgSink::new(Vec::new(), 64, false).unwrap();
        let recs = [
            ("eth0", 2, Direction::Ingress),
            ("lo", 1, Direction::Egress),
            ("eth0", 2, Direction::Egress),
        ];
        for (i, (name, idx, dir)) in recs.iter().enumerate() {
            sink.write(&PacketRecord {
                ts_ns: 1_700_000_000_000_000_001 + i as u64,
                ifindex: *idx,
                iface: (*name).into(),
                direction: *dir,
                wire_len: 100,
                data: vec![i as u8; 80].into(),
            })
            .unwrap();
        }
        let buf = sink.into_inner().unwrap();
        let mut r = PcapNgReader::new(&buf[..]).unwrap();
        let mut idbs = 0;
        let mut epbs = Vec::new();
        while let Some(b) = r.next_block() {
            match b.unwrap().into_owned() {
                Block::InterfaceDescription(_) => idbs += 1,
                Block::EnhancedPacket(e) => epbs.push((
                    e.interface_id,
                    e.data.len(),
                    e.original_len,
                    e.timestamp,
                    e.options,
                )),
                _ => {}
            }
        }
        assert_eq!(idbs, 2);
        assert_eq!(epbs.len(), 3);
        assert_eq!(epbs[0].0, 0);
        assert_eq!(epbs[1].0, 1);
        assert_eq!(epbs[2].0, 0);
        // Cut to the snaplen, wire length kept, ns timestamp kept.
        assert_eq!((epbs[0].1, epbs[0].2), (64, 100));
        assert_eq!(epbs[1].3.as_nanos(), 1_700_000_000_000_000_002);
        assert_eq!(
            epbs[1].4,
            vec![EnhancedPacketOption::Flags(EPB_FLAG_OUTBOUND)]
        );
    }
}
