package inspect

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// The vhdx log is a circular buffer of 4 KiB sectors. An entry starts with a 64-byte header
// ("loge", CRC-32C of the whole entry, entry length, tail, sequence number, descriptor
// count, log GUID, flushed and last file offsets), continues with 32-byte descriptors ("zero"
// or "desc") after the header in the first sector and in the sectors after it, and ends with
// the data sectors. qemu (vhdx_log_search) walks every sector of the log and calls the log
// dirty when an entry starting at any sector is valid: a sane header carrying the header's
// log GUID, valid descriptors, and a matching CRC over the entry (wrapping around the end of
// the log). An entry whose header is sane but whose descriptors are not makes qemu's search,
// and the open, fail. glimpse makes the same decisions without replaying anything.

const (
	vhdxLogEntryHeader = 64
	vhdxLogDescSize    = 32
	// vhdxLogScanBudget bounds the bytes checksummed while looking for valid entries: a
	// hostile log can make every sector a candidate as long as the log. Past the budget the
	// log is taken as needing replay, which refuses reads: the safe side.
	vhdxLogScanBudget = 256 << 20
	// vhdxLogWrapKeep is how much of the start of the log is read first, for entries that
	// wrap around its end (qemu's entries are two or three sectors).
	vhdxLogWrapKeep = 64 << 10
)

// vhdxScanLog reports whether the log (length bytes at off, a multiple of 1 MiB) holds a
// valid entry for guid, and describes it.
func vhdxScanLog(r io.ReaderAt, off, length int64, guid [16]byte) (bool, string, error) {
	sectors := length / vhdxLogSector
	var hdr [vhdxLogEntryHeader]byte
	sector := make([]byte, vhdxLogSector)
	// An entry may wrap around the end of the log into its first sectors. Reading those
	// first, before anything past them, lets the stream inspector (which cannot go back)
	// keep them for such an entry; in a file it costs one read.
	prefix := make([]byte, min(length, vhdxLogWrapKeep))
	if err := vhdxReadZeroFill(r, prefix, off); err != nil {
		return false, "", err
	}
	budget := int64(vhdxLogScanBudget)
	for s := range sectors {
		at := off + s*vhdxLogSector
		if err := vhdxReadZeroFill(r, hdr[:], at); err != nil {
			return false, "", err
		}
		if string(hdr[:4]) != "loge" {
			continue
		}
		entryLen := int64(binary.LittleEndian.Uint32(hdr[8:]))
		seq := binary.LittleEndian.Uint64(hdr[16:])
		descs := int64(binary.LittleEndian.Uint32(hdr[24:]))
		if entryLen > length || entryLen%vhdxLogSector != 0 || seq == 0 ||
			[16]byte(hdr[32:48]) != guid || descs*vhdxLogDescSize > entryLen {
			continue
		}
		descSectors := (descs + 2 + 127) / 128
		covered := max(descSectors, entryLen/vhdxLogSector)
		budget -= covered * vhdxLogSector
		if budget < 0 {
			return true, "more candidate entries than glimpse verifies", nil
		}
		ok, err := vhdxLogEntryValid(r, off, sectors, s, covered, descs, seq, binary.LittleEndian.Uint32(hdr[4:]), sector)
		if err != nil {
			return false, "", err
		}
		if ok {
			return true, fmt.Sprintf("a valid entry (sequence number %d) at offset %d", seq, at), nil
		}
	}
	return false, "", nil
}

// vhdxLogEntryValid checks the descriptors and the CRC of the entry at sector first, covering
// covered sectors (wrapping at the end of the log).
func vhdxLogEntryValid(r io.ReaderAt, off, sectors, first, covered, descs int64, seq uint64, sum uint32, buf []byte) (bool, error) {
	var crc uint32
	desc := int64(0) // next descriptor to check
	for k := range covered {
		at := off + ((first+k)%sectors)*vhdxLogSector
		if err := vhdxReadZeroFill(r, buf, at); err != nil {
			return false, err
		}
		// Descriptors: after the header in the first sector, then whole sectors.
		start := int64(0)
		if k == 0 {
			start = vhdxLogEntryHeader
		}
		for p := start; p+vhdxLogDescSize <= vhdxLogSector && desc < descs; p += vhdxLogDescSize {
			if !vhdxLogDescValid(buf[p:p+vhdxLogDescSize], seq) {
				// qemu does not skip such an entry: its log search fails, and so does the open.
				return false, ferr(VHDX, "log", "descriptor", at+p, desc,
					"of the entry at sector %d (sequence number %d) is neither a valid zero nor data descriptor", first, seq)
			}
			desc++
		}
		if k == 0 {
			crc = crc32.Update(crc, vhdxCastagnoli, buf[:4])
			crc = crc32.Update(crc, vhdxCastagnoli, []byte{0, 0, 0, 0})
			crc = crc32.Update(crc, vhdxCastagnoli, buf[8:])
		} else {
			crc = crc32.Update(crc, vhdxCastagnoli, buf)
		}
	}
	return crc == sum, nil
}

func vhdxLogDescValid(d []byte, seq uint64) bool {
	if binary.LittleEndian.Uint64(d[24:]) != seq || binary.LittleEndian.Uint64(d[16:])%vhdxLogSector != 0 {
		return false
	}
	switch string(d[:4]) {
	case "zero":
		return binary.LittleEndian.Uint64(d[8:])%vhdxLogSector == 0
	case "desc":
		return true
	}
	return false
}
