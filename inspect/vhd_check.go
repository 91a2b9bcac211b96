package inspect

import (
	"bytes"
	"slices"
)

// check verifies what qemu-img check cannot (qemu's vpc driver has no check): the footer
// copies, the dynamic header checksum, and every BAT entry against the file and the other
// structures.
func (c *vhdCore) check(r *Report) {
	if !c.sizeKnown {
		r.Add(CheckError, "file", -1, "the file size is not known: nothing to check against")
		return
	}
	if !c.hasHeader {
		return // a fixed disk: nothing but its footer, verified at open
	}
	if c.footer.diskType == vhdFixed {
		r.Add(Corruption, "footer", 60, "disk type fixed, but the file starts with a footer copy and a dynamic header")
	}
	if !c.hdrSumOK {
		r.Add(Corruption, "dynamic disk header", c.hdrOffset+36, "checksum 0x%08x does not match the header (0x%08x)",
			c.hdr.checksum, vhdChecksum(c.hdr.raw, 36))
	}
	// The footer at the end must be a valid copy of the one at the start.
	endFooter := int64(-1)
	if c.fileSize >= vhdFooterSize*2 {
		endFooter = vhdTailFooterOffset(c.fileSize)
		n := min(int64(vhdFooterSize), c.fileSize-endFooter)
		buf := make([]byte, vhdFooterSize)
		if got, err := c.r.ReadAt(buf[:n], endFooter); int64(got) < n {
			r.Add(CheckError, "footer", endFooter, "reading the footer at the end of the file: %v", err)
		} else if !vhdValidFooter(buf) {
			r.Add(Corruption, "footer", endFooter, "no valid footer at the end of the file (the image may be truncated)")
			endFooter = -1
		} else if !bytes.Equal(buf, c.footer.raw) {
			r.Add(Corruption, "footer", endFooter, "the footer at the end of the file differs from the copy at offset 0")
		}
	} else {
		r.Add(Corruption, "footer", 0, "the file is too small to hold a footer copy, a header and a footer")
	}

	// Metadata that no block may overlap.
	type span struct {
		start, end int64
		what       string
		index      int64
	}
	meta := []span{
		{0, vhdFooterSize, "footer copy", -1},
		{c.hdrOffset, c.hdrOffset + vhdHeaderSize, "dynamic disk header", -1},
		{c.batOffset, c.batOffset + alignUp(c.entries*4, vhdSector), "BAT", -1},
	}
	if endFooter >= 0 {
		meta = append(meta, span{endFooter, endFooter + vhdFooterSize, "footer", -1})
	}
	for _, l := range c.locators {
		if l.DataLength > 0 && l.DataOffset >= 0 && l.DataOffset <= c.fileSize {
			meta = append(meta, span{l.DataOffset, l.DataOffset + int64(l.DataLength), "parent locator data", -1})
		}
	}
	for i, a := range meta {
		for _, b := range meta[i+1:] {
			if a.start < b.end && b.start < a.end {
				r.Add(Corruption, a.what, a.start, "overlaps the %s at offset %d", b.what, b.start)
			}
		}
	}

	blockLen := c.bitmapSize + c.blockSize
	needed := (c.virtual + c.blockSize - 1) / c.blockSize
	r.TotalClusters = needed
	// Allocated blocks that lie inside the file, for the overlap check. There can be at
	// most fileSize/blockLen of them without overlapping; past that the list stops growing.
	maxBlocks := c.fileSize/blockLen + 1
	var blocks []span
	tooMany := false
	end := int64(0)
	err := c.bat.scan(func(i int64, v uint64) bool {
		if v == vhdUnallocated {
			return true
		}
		r.AllocatedClusters++
		start := int64(v) * vhdSector
		stop := start + blockLen
		entryOff := c.batOffset + 4*i
		if i >= needed {
			r.Add(Leak, "BAT", entryOff, "entry %d allocates a block at offset %d, past the end of the %d-byte disk", i, start, c.virtual)
		}
		if stop > c.fileSize {
			r.Add(Corruption, "BAT", entryOff, "entry %d: block at offset %d ends at %d, past the end of the file (%d bytes)", i, start, stop, c.fileSize)
			return true
		}
		end = max(end, stop)
		for _, m := range meta {
			if start < m.end && m.start < stop {
				r.Add(Corruption, "BAT", entryOff, "entry %d: block at offset %d overlaps the %s at offset %d", i, start, m.what, m.start)
			}
		}
		if int64(len(blocks)) < maxBlocks {
			blocks = append(blocks, span{start, stop, "block", i})
		} else if !tooMany {
			tooMany = true
			r.Add(Corruption, "BAT", entryOff, "more blocks are allocated than fit in the file: blocks overlap")
		}
		return true
	})
	if err != nil {
		r.Add(CheckError, "BAT", c.batOffset, "reading the BAT: %v", err)
	}
	slices.SortFunc(blocks, func(a, b span) int {
		if a.start != b.start {
			if a.start < b.start {
				return -1
			}
			return 1
		}
		return int(a.index - b.index)
	})
	for k := 1; k < len(blocks); k++ {
		a, b := blocks[k-1], blocks[k]
		if b.start < a.end {
			r.Add(Corruption, "BAT", c.batOffset+4*b.index, "entry %d: block at offset %d overlaps the block of entry %d at offset %d",
				b.index, b.start, a.index, a.start)
		}
	}
	if end > 0 {
		r.ImageEndOffset = end + vhdFooterSize
	}
}
