package convert

import (
	"encoding/binary"
	"fmt"
	"math"
)

// vmdkSparseWriter writes a monolithicSparse vmdk. It writes through a RawFile, which
// gives it the temporary file beside the destination, the rename in Commit and the removal
// in Abort; its positional writes are RawFile.Write calls with the file offset as the
// chunk's offset.
//
// Layout (sectors), qemu's: header at 0; descriptor at 1 (20 sectors); redundant grain
// directory at 21, its grain tables after it; the grain directory, its grain tables after
// it; grains from overHead (the end of the tables, rounded up to a grain) on, allocated in
// guest order. The tables are preallocated: the file has holes there until a table is
// written, and a table is written (to both copies) when the guest has passed its range.
type vmdkSparseWriter struct {
	cfg vmdkConfig
	rf  *RawFile
	lay vmdkLayout

	rgdOff, gdOff int64 // sectors
	overhead      int64 // sectors
	next          int64 // sector of the next grain
	pos           int64 // guest offset of the next chunk
	gt            vmdkGT
	begun         bool
}

var _ Writer = (*vmdkSparseWriter)(nil)

// Begin writes the header, the descriptor and both grain directories.
func (w *vmdkSparseWriter) Begin(size int64) (Layout, error) {
	lay, err := newVMDKLayout(&w.cfg, size)
	if err != nil {
		return Layout{}, err
	}
	w.lay = lay
	tables := lay.gdSectors + lay.gdEntries*vmdkGTSectors
	w.rgdOff = vmdkDescOffset + vmdkDescSectors
	w.gdOff = w.rgdOff + tables
	w.overhead = alignUp(w.gdOff+tables, lay.grainSecs)
	if w.overhead > vmdkMaxSector {
		return Layout{}, fmt.Errorf("%s: internal error: the tables end at sector %d, past what a grain directory can address", w.cfg.name, w.overhead)
	}
	w.next = w.overhead
	w.gt.idx = -1
	// Every write goes through the RawFile's bounds check; the real size is set in Commit.
	w.rf.Begin(math.MaxInt64)

	version, flags := uint32(1), uint32(vmdkFlagNewline|vmdkFlagRGD)
	if w.cfg.zeroed {
		version, flags = 2, flags|vmdkFlagZeroGrain
	}
	h := vmdkHeader{version: version, flags: flags, capacity: uint64(lay.capacity), grainSecs: uint64(lay.grainSecs),
		descOff: vmdkDescOffset, descSecs: vmdkDescSectors, rgdOff: uint64(w.rgdOff), gdOff: uint64(w.gdOff),
		overhead: uint64(w.overhead)}
	desc, err := w.cfg.descriptor(lay)
	if err != nil {
		return Layout{}, err
	}
	head := make([]byte, vmdkSectorSize, vmdkSectorSize+len(desc))
	h.encode(head)
	head = append(head, desc...)
	if err := w.writeAt(head, 0); err != nil {
		return Layout{}, err
	}
	for _, dir := range []int64{w.rgdOff, w.gdOff} {
		if err := w.writeDirectory(dir); err != nil {
			return Layout{}, err
		}
	}
	w.begun = true
	return Layout{Ordered: true, BlockSize: lay.grain}, nil
}

// writeDirectory writes a grain directory at sector dir whose tables follow it.
func (w *vmdkSparseWriter) writeDirectory(dir int64) error {
	const piece = 16 << 10 // entries per write
	buf := make([]byte, 4*min(piece, w.lay.gdEntries))
	for i := int64(0); i < w.lay.gdEntries; i += piece {
		n := min(piece, w.lay.gdEntries-i)
		for j := range n {
			binary.LittleEndian.PutUint32(buf[j*4:], uint32(dir+w.lay.gdSectors+(i+j)*vmdkGTSectors))
		}
		if err := w.writeAt(buf[:n*4], dir*vmdkSectorSize+i*4); err != nil {
			return err
		}
	}
	return nil
}

func (w *vmdkSparseWriter) writeAt(b []byte, off int64) error {
	return w.rf.Write(&Chunk{Off: off, Len: int64(len(b)), Data: b})
}

// Write places a data chunk at the next free grains (one write) and records them in the
// grain table; a zero chunk leaves its grains unallocated.
func (w *vmdkSparseWriter) Write(c *Chunk) error {
	if err := vmdkCheckChunk(w.cfg.name, c, w.pos, w.lay); err != nil {
		return err
	}
	w.pos += c.Len
	if c.Zero() {
		return nil
	}
	g := c.Off / w.lay.grain
	n := (c.Len + w.lay.grain - 1) / w.lay.grain
	at := w.next
	if at+n*w.lay.grainSecs > vmdkMaxSector {
		return fmt.Errorf("%s: the vmdk file would grow past 2 TiB, the most a hosted sparse extent can address (32-bit sector offsets)", w.cfg.name)
	}
	if err := w.writeAt(c.Data, at*vmdkSectorSize); err != nil {
		return err
	}
	w.next += n * w.lay.grainSecs
	for i := range n {
		if err := w.enter(g+i, uint32(at+i*w.lay.grainSecs)); err != nil {
			return err
		}
	}
	return nil
}

// enter records grain g at sector s, writing out the previous table when g is in another.
func (w *vmdkSparseWriter) enter(g int64, s uint32) error {
	if t := g / vmdkGTEsPerGT; t != w.gt.idx {
		if err := w.flushGT(); err != nil {
			return err
		}
		w.gt.idx = t
	}
	w.gt.ents[g%vmdkGTEsPerGT] = s
	w.gt.used = true
	return nil
}

// flushGT writes the current grain table to both copies. With zeroed_grain its zero
// grains (inside the disk) are marked zeroed.
func (w *vmdkSparseWriter) flushGT() error {
	if !w.gt.used {
		return nil
	}
	t := w.gt.idx
	if w.cfg.zeroed {
		for j := range w.gt.ents {
			if w.gt.ents[j] == 0 && t*vmdkGTEsPerGT+int64(j) < w.lay.grains {
				w.gt.ents[j] = vmdkGTEZeroed
			}
		}
	}
	b := w.gt.bytes()
	for _, dir := range []int64{w.rgdOff, w.gdOff} {
		if err := w.writeAt(b, (dir+w.lay.gdSectors+t*vmdkGTSectors)*vmdkSectorSize); err != nil {
			return err
		}
	}
	clear(w.gt.ents[:])
	w.gt.used = false
	return nil
}

// Commit writes the last grain table, sets the file's size (the end of the last grain, or
// of the tables) and renames the file into place.
func (w *vmdkSparseWriter) Commit() error {
	if !w.begun {
		return fmt.Errorf("%s: Commit before Begin", w.cfg.name)
	}
	if w.pos != w.lay.size {
		return fmt.Errorf("%s: internal error: the chunks end at guest offset %d, the disk at %d", w.cfg.name, w.pos, w.lay.size)
	}
	if err := w.flushGT(); err != nil {
		return err
	}
	w.rf.Begin(w.next * vmdkSectorSize)
	return w.rf.Commit()
}

// Abort removes the temporary file.
func (w *vmdkSparseWriter) Abort() error { return w.rf.Abort() }
