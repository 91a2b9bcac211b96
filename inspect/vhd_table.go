package inspect

import (
	"encoding/binary"
	"io"
	"sync"
)

// vhdTable is a block allocation table (vhd's BAT of 32-bit big-endian entries, vhdx's BAT of
// 64-bit little-endian entries) read lazily in pages, so that opening an image never reads a
// table that grows with the disk, and a table of any size costs at most
// vhdTableMaxPages pages of memory. Both vhd.go and vhdx.go use it; it parses nothing.
type vhdTable struct {
	r         io.ReaderAt
	off       int64 // file offset of entry 0
	n         int64 // number of entries
	width     int64 // 4 or 8 bytes
	bigEndian bool
	format    Format
	structure string
	fileSize  int64 // entries at or past this offset are refused; unknownSize while streaming

	mu    sync.Mutex
	pages map[int64][]uint64
	order []int64 // pages in the order they were loaded, for eviction
}

const (
	vhdTablePage     = 4096 // entries per page: 16 KiB of vhd BAT, 32 KiB of vhdx BAT
	vhdTableMaxPages = 64   // at most 2 MiB of decoded entries cached per image
)

func newVHDTable(r io.ReaderAt, off, n, width int64, bigEndian bool, f Format, structure string, fileSize int64) *vhdTable {
	return &vhdTable{r: r, off: off, n: n, width: width, bigEndian: bigEndian, format: f, structure: structure,
		fileSize: fileSize, pages: make(map[int64][]uint64)}
}

// get returns entry i (0 <= i < n).
func (t *vhdTable) get(i int64) (uint64, error) {
	if i < 0 || i >= t.n {
		return 0, ferr(t.format, t.structure, "", -1, i, "entry index out of range (%d entries)", t.n)
	}
	page := i / vhdTablePage
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.pages[page]
	if !ok {
		var err error
		p, err = t.load(page, nil)
		if err != nil {
			return 0, err
		}
		if len(t.order) >= vhdTableMaxPages {
			delete(t.pages, t.order[0])
			t.order = t.order[1:]
		}
		t.pages[page] = p
		t.order = append(t.order, page)
	}
	return p[i-page*vhdTablePage], nil
}

// load reads and decodes one page into dst (reused when large enough).
func (t *vhdTable) load(page int64, dst []uint64) ([]uint64, error) {
	first := page * vhdTablePage
	cnt := min(int64(vhdTablePage), t.n-first)
	off := t.off + first*t.width
	if end, ok := add64(off, cnt*t.width); !ok || end > t.fileSize {
		return nil, ferr(t.format, t.structure, "", off, nil, "entries %d-%d lie past the end of the file", first, first+cnt-1)
	}
	raw, err := readAt(t.r, off, cnt*t.width, t.format, t.structure)
	if err != nil {
		return nil, err
	}
	if int64(cap(dst)) < cnt {
		dst = make([]uint64, cnt)
	}
	dst = dst[:cnt]
	for k := range dst {
		b := raw[int64(k)*t.width:]
		switch {
		case t.width == 4 && t.bigEndian:
			dst[k] = uint64(binary.BigEndian.Uint32(b))
		case t.width == 4:
			dst[k] = uint64(binary.LittleEndian.Uint32(b))
		case t.bigEndian:
			dst[k] = binary.BigEndian.Uint64(b)
		default:
			dst[k] = binary.LittleEndian.Uint64(b)
		}
	}
	return dst, nil
}

// scan calls fn for every entry in order, reading page by page without filling the cache
// (for Check). It stops early when fn returns false.
func (t *vhdTable) scan(fn func(i int64, v uint64) bool) error {
	var buf []uint64
	for page := int64(0); page*vhdTablePage < t.n; page++ {
		p, err := t.load(page, buf)
		if err != nil {
			return err
		}
		buf = p
		for k, v := range p {
			if !fn(page*vhdTablePage+int64(k), v) {
				return nil
			}
		}
	}
	return nil
}
