package convert

import (
	"context"
	"encoding/json"
	"fmt"

	"glimpse/inspect"
)

// MapEntry is one run of the allocation map, with the fields and meaning of
// `qemu-img map --output=json`.
type MapEntry struct {
	Start  int64
	Length int64
	// Depth is the layer that decides the run: 0 for the image, 1 for its backing file…
	// For unallocated runs it is the depth of the chain's end, as qemu reports it.
	Depth int
	// Present: some layer of the chain describes the run (data or zeros).
	Present bool
	// Zero: the run reads as zeros.
	Zero bool
	// Data: the run's bytes are stored (as they are, or compressed).
	Data bool
	// Offset is where the run's bytes start in the file that holds them, or -1 when
	// there is no such single place (zeros, holes, compressed data).
	Offset int64
}

// End is the first guest offset past the entry.
func (e MapEntry) End() int64 { return e.Start + e.Length }

// MarshalJSON writes qemu-img's field names, omitting offset when it is not known.
func (e MapEntry) MarshalJSON() ([]byte, error) {
	type entry struct {
		Start   int64  `json:"start"`
		Length  int64  `json:"length"`
		Depth   int    `json:"depth"`
		Present bool   `json:"present"`
		Zero    bool   `json:"zero"`
		Data    bool   `json:"data"`
		Offset  *int64 `json:"offset,omitempty"`
	}
	x := entry{e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data, nil}
	if e.Offset >= 0 {
		x.Offset = &e.Offset
	}
	return json.Marshal(x)
}

// entryOf turns an extent into a map entry as qemu-img reports it. Raw images map guest
// offsets to the same file offsets everywhere, zeros included. For formats whose qemu
// driver has no backing files (vhd, vdi, raw), an unallocated run cannot be decided by a
// lower layer, so qemu calls it present (and zero); qcow2 and vmdk call it not present.
func entryOf(e inspect.Extent, raw, noBacking bool) MapEntry {
	m := MapEntry{Start: e.Start, Length: e.Length, Depth: e.Depth, Offset: -1}
	switch e.Kind {
	case inspect.KindData:
		m.Present, m.Data, m.Offset = true, true, e.Offset
	case inspect.KindCompressed:
		m.Present, m.Data = true, true
	case inspect.KindZero:
		m.Present, m.Zero = true, true
	case inspect.KindHole:
		m.Zero, m.Present = true, noBacking
	}
	if raw && e.Depth == 0 {
		m.Offset = e.Start
	}
	return m
}

// mergeable is qemu-img's rule for joining two consecutive entries: same flags and
// depth, and, when they have offsets, contiguous in the file.
func mergeable(cur, next MapEntry) bool {
	if cur.Length == 0 || cur.Zero != next.Zero || cur.Data != next.Data || cur.Depth != next.Depth ||
		cur.Present != next.Present || (cur.Offset >= 0) != (next.Offset >= 0) {
		return false
	}
	return cur.Offset < 0 || cur.Offset+cur.Length == next.Offset
}

// Map calls fn with the allocation map of img, in guest order, runs merged as qemu-img
// map merges them. It stops at fn's first error, or when ctx is cancelled.
func Map(ctx context.Context, img inspect.Image, fn func(MapEntry) error) error {
	size := img.Size()
	format := img.Info().Format
	raw := format == inspect.Raw
	noBacking := format == inspect.Raw || format == inspect.VHD || format == inspect.VDI || format == inspect.ISO
	var cur MapEntry
	for pos := int64(0); pos < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := img.Extent(pos, 0)
		if err != nil {
			return fmt.Errorf("reading the allocation map at guest offset %d: %w", pos, err)
		}
		if e.Start != pos || e.Length <= 0 || e.End() > size {
			return fmt.Errorf("map: extent %+v at guest offset %d does not tile the disk", e, pos)
		}
		pos = e.End()
		next := entryOf(e, raw, noBacking)
		if mergeable(cur, next) {
			cur.Length += next.Length
			continue
		}
		if cur.Length > 0 {
			if err := fn(cur); err != nil {
				return err
			}
		}
		cur = next
	}
	if cur.Length > 0 {
		return fn(cur)
	}
	return nil
}
