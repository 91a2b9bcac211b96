package inspect

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Check bounds. The grain overlap check keeps one bit per grain-sized unit of the file for
// uncompressed grains and eight bytes per compressed grain; above these limits that part
// of the check is skipped with a CheckError rather than using unbounded memory.
const (
	vmdkCheckMaxBits      = 1 << 28 // 32 MiB bitmap: a 16 TiB file with 64 KiB grains
	vmdkCheckMaxGrains    = 4 << 20 // compressed grains (and unaligned uncompressed ones) tracked
	vmdkCheckMaxIntervals = 2 << 20 // metadata structures (header, GDs, GTs) tracked
)

// check is `qemu-img check` for vmdk, and more: qemu reports only grains that start past
// the end of their file; glimpse also reports grain directory entries past the end,
// grains and grain tables that overlap each other or the header, descriptor and
// directories, grains inside the metadata area, bad grain markers, and a redundant grain
// directory that disagrees with the primary.
func (c *vmdkCore) check(r *Report) {
	for i, x := range c.extents {
		switch x.kind {
		case vmdkExtSparse:
			var descOff, descLen int64
			if x.sp == c.sparse {
				descOff, descLen = c.descOff, c.descLen
			}
			x.sp.check(r, descOff, descLen)
		case vmdkExtFlat:
			switch {
			case x.fileOff >= x.fileSize:
				r.Add(Corruption, "extent", x.fileOff, "extent %d (%q) starts at offset %d, past the end of its file (%d bytes)", i, clip(x.name, 80), x.fileOff, x.fileSize)
			case x.fileOff+x.length > x.fileSize:
				r.Add(Corruption, "extent", x.fileOff, "extent %d (%q) ends at offset %d, past the end of its file (%d bytes)", i, clip(x.name, 80), x.fileOff+x.length, x.fileSize)
			}
		case vmdkExtUnreadable:
			r.Add(CheckError, "extent", -1, "extent %d (%q) not checked: %v", i, clip(x.name, 80), x.err)
		}
	}
}

type vmdkInterval struct {
	start, end int64
	what       string
	idx        int64
}

func (v vmdkInterval) String() string {
	if v.idx >= 0 {
		return fmt.Sprintf("%s %d [%d, %d)", v.what, v.idx, v.start, v.end)
	}
	return fmt.Sprintf("%s [%d, %d)", v.what, v.start, v.end)
}

func (sp *vmdkSparse) check(r *Report, descOff, descLen int64) {
	name := sp.file
	dir, err := sp.directory()
	if err != nil {
		r.Add(CheckError, "grain directory", max(sp.gdOff, -1), "%s: %v", name, err)
		return
	}
	gd := dir.ents
	gdBytes := sp.gdEntries * 4
	if !within(sp.gdOff, gdBytes, sp.size) {
		r.Add(Corruption, "grain directory", sp.gdOff, "%s: the grain directory (%d bytes at %d) extends past the end of the file (%d bytes)", name, gdBytes, sp.gdOff, sp.size)
	}
	var rgd []uint32
	if sp.rgdOff != 0 {
		if rgd, err = sp.readDirectory(sp.rgdOff); err != nil {
			r.Add(CheckError, "redundant grain directory", sp.rgdOff, "%s: %v", name, err)
			rgd = nil
		} else if !within(sp.rgdOff, gdBytes, sp.size) {
			r.Add(Corruption, "redundant grain directory", sp.rgdOff, "%s: the redundant grain directory (%d bytes at %d) extends past the end of the file (%d bytes)", name, gdBytes, sp.rgdOff, sp.size)
		}
	}

	// Metadata: header, descriptor, directories, footer, grain tables.
	meta := []vmdkInterval{{0, vmdkHeaderSize, "header", -1}}
	if descLen > 0 {
		meta = append(meta, vmdkInterval{descOff, descOff + descLen, "descriptor", -1})
	}
	if gdBytes > 0 {
		meta = append(meta, vmdkInterval{sp.gdOff, sp.gdOff + gdBytes, "grain directory", -1})
		if rgd != nil {
			meta = append(meta, vmdkInterval{sp.rgdOff, sp.rgdOff + gdBytes, "redundant grain directory", -1})
		}
	}
	if sp.footer != nil {
		meta = append(meta, vmdkInterval{sp.footerOff, sp.footerOff + vmdkFooterSize, "footer", -1})
	}
	tooMany := false
	tables := func(dir []uint32, what string) []bool {
		ok := make([]bool, len(dir))
		for i, e := range dir {
			if e == 0 {
				continue
			}
			off := int64(e) * vmdkSector
			if !within(off, sp.gtBytes, sp.size) {
				r.Add(Corruption, what, off, "%s: %s entry %d points past the end of the file (grain table at %d)", name, what, i, off)
				continue
			}
			ok[i] = true
			if what == "redundant grain directory" && i < len(gd) && gd[i] == e {
				continue // shares the primary's table: nothing more to place
			}
			if len(meta) >= vmdkCheckMaxIntervals {
				tooMany = true
				continue
			}
			meta = append(meta, vmdkInterval{off, off + sp.gtBytes, "grain table", int64(i)})
		}
		return ok
	}
	gdOK := tables(gd, "grain directory")
	var rgdOK []bool
	if rgd != nil {
		rgdOK = tables(rgd, "redundant grain directory")
		for i := range min(len(gd), len(rgd)) {
			if (gd[i] == 0) != (rgd[i] == 0) {
				r.Add(Corruption, "redundant grain directory", sp.rgdOff+int64(i)*4, "%s: redundant grain directory entry %d is %d, the primary's is %d", name, i, rgd[i], gd[i])
			}
		}
	}
	if tooMany {
		r.Add(CheckError, "grain directory", sp.gdOff, "%s: more than %d grain tables: overlaps among them not checked", name, vmdkCheckMaxIntervals)
	}
	slices.SortFunc(meta, func(a, b vmdkInterval) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	end, endIdx := int64(-1), -1
	for i, m := range meta {
		if m.end <= m.start {
			continue
		}
		if m.start < end {
			r.Add(Corruption, m.what, m.start, "%s: %v overlaps %v", name, m, meta[endIdx])
		}
		if m.end > end {
			end, endIdx = m.end, i
		}
	}
	metaAt := func(off, n int64) (vmdkInterval, bool) {
		// the last interval starting before off+n, or any earlier one reaching past off
		i, _ := slices.BinarySearchFunc(meta, off+n, func(m vmdkInterval, t int64) int {
			if m.start < t {
				return -1
			}
			return 1
		})
		for j := i - 1; j >= 0 && j >= i-64; j-- {
			if meta[j].end > off && meta[j].end > meta[j].start {
				return meta[j], true
			}
		}
		return vmdkInterval{}, false
	}

	// Grains.
	var bitmap []uint64
	unit := sp.grain
	units := (sp.size + unit - 1) / unit
	if !sp.compressed {
		if units <= vmdkCheckMaxBits {
			bitmap = make([]uint64, (units+63)/64)
		} else {
			r.Add(CheckError, "grain table", -1, "%s: file too large for the grain overlap check at this grain size", name)
		}
	}
	type span struct{ start, n uint32 } // sectors
	var spans []span
	spansFull := false
	overhead := int64(sp.hdr.OverHead) * vmdkSector
	grainSectors := uint32(sp.grain / vmdkSector)
	buf := make([]byte, sp.gtBytes)
	rbuf := make([]byte, sp.gtBytes)
	var mark [vmdkMarkerHeader]byte
	for i, e := range gd {
		if !gdOK[i] {
			continue
		}
		if err := readZeroFill(sp.r, buf, int64(e)*vmdkSector); err != nil {
			r.Add(CheckError, "grain table", int64(e)*vmdkSector, "%s: %v", name, err)
			return
		}
		if rgdOK != nil && i < len(rgd) && rgdOK[i] && rgd[i] != e {
			if err := readZeroFill(sp.r, rbuf, int64(rgd[i])*vmdkSector); err != nil {
				r.Add(CheckError, "grain table", int64(rgd[i])*vmdkSector, "%s: %v", name, err)
				return
			}
			differ := 0
			for j := 0; j < len(buf); j += 4 {
				if binary.LittleEndian.Uint32(buf[j:]) != binary.LittleEndian.Uint32(rbuf[j:]) {
					differ++
				}
			}
			if differ > 0 {
				r.Add(Corruption, "redundant grain table", int64(rgd[i])*vmdkSector, "%s: redundant grain table %d differs from the primary in %d entries", name, i, differ)
			}
		}
		for j := int64(0); j < sp.numGTEs; j++ {
			ge := binary.LittleEndian.Uint32(buf[j*4:])
			g := int64(i)*sp.numGTEs + j
			if ge == 0 || (ge == vmdkGTEZeroed && sp.zeroGrain) || g*sp.grain >= sp.capacity {
				continue
			}
			off := int64(ge) * vmdkSector
			guest := g * sp.grain
			if off >= sp.size {
				r.Add(Corruption, "grain table", int64(e)*vmdkSector+j*4, "%s: the grain for guest offset %d points past the end of the file (offset %d)", name, guest, off)
				continue
			}
			n := sp.grain
			if sp.compressed && sp.markers {
				if err := readZeroFill(sp.r, mark[:], off); err != nil {
					r.Add(CheckError, "grain marker", off, "%s: %v", name, err)
					return
				}
				lba := binary.LittleEndian.Uint64(mark[:])
				size := int64(binary.LittleEndian.Uint32(mark[8:]))
				if lba != uint64(g)*uint64(grainSectors) {
					r.Add(Corruption, "grain marker", off, "%s: the marker of the grain for guest offset %d says LBA %d", name, guest, lba)
				}
				if size == 0 || size > 2*sp.grain {
					r.Add(Corruption, "grain marker", off, "%s: the marker of the grain for guest offset %d gives a compressed size of %d", name, guest, size)
					size = 0
				}
				n = vmdkMarkerHeader + size
				if off+n > sp.size {
					r.Add(Corruption, "grain marker", off, "%s: the compressed grain for guest offset %d ends past the end of the file", name, guest)
				}
			}
			if m, hit := metaAt(off, n); hit {
				r.Add(Corruption, "grain table", off, "%s: the grain for guest offset %d (at %d) overlaps the %v", name, guest, off, m)
			} else if !sp.compressed && sp.head.GDOffset != vmdkGDAtEnd && off < overhead {
				r.Add(Corruption, "grain table", off, "%s: the grain for guest offset %d (at %d) lies inside the metadata area (overHead %d bytes)", name, guest, off, overhead)
			}
			if bitmap != nil && off%unit == 0 {
				u := off / unit
				if bitmap[u/64]&(1<<(u%64)) != 0 {
					r.Add(Corruption, "grain table", int64(e)*vmdkSector+j*4, "%s: the grain for guest offset %d (at %d) is also used by another grain table entry", name, guest, off)
				}
				bitmap[u/64] |= 1 << (u % 64)
				continue
			}
			if len(spans) >= vmdkCheckMaxGrains {
				spansFull = true
				continue
			}
			spans = append(spans, span{ge, uint32((n + vmdkSector - 1) / vmdkSector)})
		}
	}
	if spansFull {
		r.Add(CheckError, "grain table", -1, "%s: more than %d grains to place: overlaps not fully checked", name, vmdkCheckMaxGrains)
	}
	slices.SortFunc(spans, func(a, b span) int { return int(int64(a.start) - int64(b.start)) })
	var reach uint64
	for i, s := range spans {
		if i > 0 && uint64(s.start) < reach {
			r.Add(Corruption, "grain table", int64(s.start)*vmdkSector, "%s: the grain at %d overlaps another grain", name, int64(s.start)*vmdkSector)
		}
		reach = max(reach, uint64(s.start)+uint64(s.n))
		// an unaligned uncompressed grain against the aligned ones around it
		if bitmap != nil {
			u := int64(s.start) * vmdkSector / unit
			for _, v := range []int64{u, u + 1} {
				if v < units && bitmap[v/64]&(1<<(v%64)) != 0 && v*unit < (int64(s.start)+int64(s.n))*vmdkSector {
					r.Add(Corruption, "grain table", int64(s.start)*vmdkSector, "%s: the grain at %d overlaps the grain at %d", name, int64(s.start)*vmdkSector, v*unit)
				}
			}
		}
	}
	if sp.hdr.CompressAlgorithm > vmdkCompressDeflate {
		r.Add(Corruption, "header", vmdkOffCompressAl, "%s: unknown compressAlgorithm %d (qemu reads the grains as uncompressed)", name, sp.hdr.CompressAlgorithm)
	}
}
