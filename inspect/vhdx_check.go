package inspect

import (
	"bytes"
	"slices"
)

// check does what qemu-img check does for vhdx (every FULLY_PRESENT block inside the file
// and clear of the header section, log and regions) and more: both headers and both region
// tables, the log, payload blocks overlapping each other, states a disk of this kind may not
// use, and sector bitmap entries.
func (c *vhdxCore) check(r *Report) {
	if !c.sizeKnown {
		r.Add(CheckError, "file", -1, "the file size is not known: nothing to check against")
		return
	}
	for i, h := range c.headers {
		if !h.valid {
			r.Add(Corruption, "header", vhdxHeaderOffsets[i], "header %d is not valid (signature, CRC-32C or version)", i+1)
		}
	}
	if c.dirty {
		r.Add(Corruption, "log", c.logOffset, "the log holds %s that must be replayed", c.dirtyWhy)
	}
	// The second region table must be a valid copy of the first.
	rt1, err1 := readAt(c.r, vhdxRegionOffsets[0], vhdxRegionSize, VHDX, "region table")
	rt2, err2 := readAt(c.r, vhdxRegionOffsets[1], vhdxRegionSize, VHDX, "region table")
	switch {
	case err1 != nil || err2 != nil:
		r.Add(CheckError, "region table", vhdxRegionOffsets[1], "reading the region tables: %v", vhdxFirstErr(err1, err2))
	case !vhdxChecksumOK(rt2) || string(rt2[:4]) != "regi":
		r.Add(Corruption, "region table", vhdxRegionOffsets[1], "the second region table is not valid (signature or CRC-32C)")
	case !bytes.Equal(rt1, rt2):
		r.Add(Corruption, "region table", vhdxRegionOffsets[1], "the second region table differs from the first")
	}
	if c.virtualOdd {
		r.Add(Corruption, "virtual disk size", c.metaOffset, "%d bytes is not a multiple of the %d-byte logical sector", c.rawDiskSize, c.logical)
	}
	for _, s := range c.spans {
		end := s.end
		switch s.what {
		case "log", "header section":
			continue
		case "BAT region":
			end = s.start + uint64(8*c.batEntries)
		}
		if end > uint64(c.fileSize) {
			r.Add(Corruption, s.what, int64(s.start), "runs past the end of the file (%d bytes)", c.fileSize)
		}
	}
	r.TotalClusters = c.dataBlocks

	type block struct{ start, end, index int64 }
	var blocks []block
	maxBlocks := c.fileSize/c.blockSize + 1
	tooMany := false
	end := int64(0)
	err := c.bat.scan(func(i int64, v uint64) bool {
		state := v & 7
		off := int64(v>>20) << 20
		entryOff := c.batOffset + 8*i
		if i%(c.chunkRatio+1) == c.chunkRatio { // a sector bitmap entry
			switch state {
			case vhdxNotPresent:
			case vhdxSBPresent:
				if off+vhdxMiB > c.fileSize {
					r.Add(Corruption, "BAT", entryOff, "sector bitmap entry %d: block at offset %d ends past the end of the file", i, off)
				} else if !c.hasParent {
					r.Add(Leak, "BAT", entryOff, "sector bitmap entry %d allocates a block in a disk without a parent", i)
				}
			default:
				r.Add(Corruption, "BAT", entryOff, "sector bitmap entry %d has state %d", i, state)
			}
			return true
		}
		blk := i - i/(c.chunkRatio+1)
		switch state {
		case vhdxNotPresent, vhdxUndefined, vhdxZero, vhdxUnmapped, vhdxUnmappedV095:
			return true
		case vhdxPartiallyPresent:
			if !c.hasParent {
				r.Add(Corruption, "BAT", entryOff, "payload block %d is PARTIALLY_PRESENT in a disk without a parent", blk)
				return true
			}
		case vhdxFullyPresent:
		default:
			r.Add(Corruption, "BAT", entryOff, "payload block %d has the unknown state %d", blk, state)
			return true
		}
		r.AllocatedClusters++
		// qemu allows the last block to be partly in the file (it used to write them so).
		length := min(c.blockSize, c.virtual-blk*c.blockSize)
		if length <= 0 {
			length = c.blockSize
		}
		switch {
		case off >= c.fileSize:
			r.Add(Corruption, "BAT", entryOff, "payload block %d at offset %d starts past the end of the file (%d bytes)", blk, off, c.fileSize)
			return true
		case off+length > c.fileSize:
			r.Add(Corruption, "BAT", entryOff, "payload block %d at offset %d ends past the end of the file (%d bytes)", blk, off, c.fileSize)
			return true
		}
		if s, ok := vhdxOverlaps(c.spans, uint64(off), uint64(c.blockSize)); ok {
			r.Add(Corruption, "BAT", entryOff, "payload block %d at offset %d overlaps the %s", blk, off, s.what)
		}
		end = max(end, off+length)
		if int64(len(blocks)) < maxBlocks {
			blocks = append(blocks, block{off, off + c.blockSize, blk})
		} else if !tooMany {
			tooMany = true
			r.Add(Corruption, "BAT", entryOff, "more blocks are allocated than fit in the file: blocks overlap")
		}
		return true
	})
	if err != nil {
		r.Add(CheckError, "BAT", c.batOffset, "reading the BAT: %v", err)
	}
	slices.SortFunc(blocks, func(a, b block) int {
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
			r.Add(Corruption, "BAT", c.batOffset+8*c.batIndex(b.index), "payload block %d at offset %d overlaps payload block %d at offset %d",
				b.index, b.start, a.index, a.start)
		}
	}
	if end > 0 {
		r.ImageEndOffset = end
	}
}

func vhdxFirstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
