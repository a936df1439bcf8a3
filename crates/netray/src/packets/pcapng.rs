//! pcapng writer (`-w FILE.pcapng`, `-w -` for stdout) on top of the
//! `pcap-file` crate.
//!
//! Layout: one Section Header Block, then one Interface Description Block
//! per (ifindex, name) the first time a packet from it is written
//! (pcapng allows IDBs anywhere before their first use, which lets a
//! capture pick up interfaces as they appear), then Enhanced Packet Blocks.
//! Timestamps are in nanoseconds (`if_tsresol` = 9), because `pcap-file`
//! always writes EPB timestamps as nanoseconds. Each EPB carries the
//! direction in its `epb_flags` option (inbound = 1, outbound = 2).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use pcap_file::DataLink;
use pcap_file::PcapError;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};

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

/// Streams [`PacketRecord`]s into a pcapng section.
pub struct PcapNgSink<W: Write> {
    /// The underlying block writer.
    writer: PcapNgWriter<W>,
    /// Interface id (IDB index) per (ifindex, name).
    interfaces: HashMap<(u32, String), u32>,
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
            ..Default::default()
        };
        let mut w = Self {
            writer: PcapNgWriter::with_section_header(writer, shb).map_err(io_err)?,
            interfaces: HashMap::new(),
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
        let key = (ifindex, name.to_string());
        if let Some(&id) = self.interfaces.get(&key) {
            return Ok(id);
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
        self.interfaces.insert(key, id);
        Ok(id)
    }

    /// Writes one packet (an EPB), declaring its interface if needed.
    pub fn write(&mut self, rec: &PacketRecord) -> io::Result<()> {
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
        };
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: rec
                .time
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
            // A wire length below the captured length would be invalid.
            original_len: rec.wire_len.max(cap as u32),
            data: Cow::Borrowed(data),
            options: vec![EnhancedPacketOption::Flags(flags)],
        };
        self.writer.write_pcapng_block(epb).map_err(io_err)?;
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
    use pcap_file::pcapng::{Block, PcapNgReader};

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
                time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001 + i as u64),
                ifindex: *idx,
                iface: name.to_string(),
                direction: *dir,
                wire_len: 100,
                data: vec![i as u8; 80],
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
