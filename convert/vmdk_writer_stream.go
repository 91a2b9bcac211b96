package convert

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zlib"

	"glimpse/internal/writeback"
)

// vmdkDeflateLevel is the zlib level of streamOptimized grains. qemu uses zlib's default
// (6); klauspost's level 6 gives about the same size at several times the speed, and the
// pipeline runs it on every core.
const vmdkDeflateLevel = 6

// vmdkStreamBuffer is the output buffer: grain records arrive a chunk at a time, tables
// and markers a sector or four at a time.
const vmdkStreamBuffer = 256 << 10

// vmdkStreamWriter writes a streamOptimized vmdk in one pass, in guest order: to a
// RawFile (temporary file, renamed in Commit) or to a stream such as standard output.
//
// Layout: header (gdOffset GD_AT_END) at 0; descriptor at 1 (20 sectors); zeros up to
// overHead (the descriptor's end rounded up to a grain); then, in guest order, each data
// grain as a grain marker (LBA, compressed size) and its zlib stream, padded to a sector,
// with each grain table (marker, then the table) written before the first grain of a later
// table; at the end the last table, the grain directory marker and directory, the footer
// marker, the footer (the header with the directory's offset) and the end-of-stream marker.
type vmdkStreamWriter struct {
	cfg    vmdkConfig
	rf     *RawFile  // nil when writing to a stream
	stdout io.Writer // the stream, when rf is nil
	out    *bufio.Writer
	lay    vmdkLayout
	hdr    vmdkHeader

	pos   int64 // bytes written
	gpos  int64 // guest offset of the next chunk
	gd    []uint32
	gt    vmdkGT
	sec   [vmdkSectorSize]byte
	begun bool
	done  bool

	zlibs sync.Pool // *zlib.Writer
}

var (
	_ Writer  = (*vmdkStreamWriter)(nil)
	_ Encoder = (*vmdkStreamWriter)(nil)
)

func newVMDKStream(cfg vmdkConfig, rf *RawFile, stdout io.Writer) *vmdkStreamWriter {
	w := &vmdkStreamWriter{cfg: cfg, rf: rf, stdout: stdout}
	var dst io.Writer = &vmdkStdout{w: stdout, name: cfg.name}
	if rf != nil {
		dst = &vmdkFileAppender{rf: rf}
	}
	w.out = bufio.NewWriterSize(dst, vmdkStreamBuffer)
	return w
}

// vmdkFileAppender appends to a RawFile (whose Write names the file in its errors).
type vmdkFileAppender struct {
	rf  *RawFile
	off int64
}

func (a *vmdkFileAppender) Write(p []byte) (int, error) {
	if err := a.rf.Write(&Chunk{Off: a.off, Len: int64(len(p)), Data: p}); err != nil {
		return 0, err
	}
	a.off += int64(len(p))
	return len(p), nil
}

// vmdkStdout names the stream and the offset in its errors.
type vmdkStdout struct {
	w    io.Writer
	name string
	off  int64
}

func (s *vmdkStdout) Write(p []byte) (int, error) {
	n, err := writeback.Write(s.w, p)
	s.off += int64(n)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return n, writeError(s.name, fmt.Sprintf("writing %d bytes at offset %d", len(p), s.off-int64(n)), err)
	}
	return n, nil
}

// Begin writes the header and the descriptor, padded to the first grain.
func (w *vmdkStreamWriter) Begin(size int64) (Layout, error) {
	lay, err := newVMDKLayout(&w.cfg, size)
	if err != nil {
		return Layout{}, err
	}
	w.lay = lay
	w.gd = make([]uint32, lay.gdEntries)
	w.gt.idx = -1
	if w.rf != nil {
		w.rf.Begin(1<<63 - 1) // every write is bounds-checked; the size is set in Commit
	}
	overhead := alignUp(vmdkDescOffset+vmdkDescSectors, lay.grainSecs)
	w.hdr = vmdkHeader{version: 3, flags: vmdkFlagNewline | vmdkFlagCompressed | vmdkFlagMarkers,
		capacity: uint64(lay.capacity), grainSecs: uint64(lay.grainSecs), descOff: vmdkDescOffset,
		descSecs: vmdkDescSectors, gdOff: vmdkGDAtEnd, overhead: uint64(overhead), compress: vmdkDeflate}
	desc, err := w.cfg.descriptor(lay)
	if err != nil {
		return Layout{}, err
	}
	w.hdr.encode(w.sec[:])
	w.write(w.sec[:])
	w.write(desc)
	clear(w.sec[:])
	for w.pos < overhead*vmdkSectorSize {
		w.write(w.sec[:])
	}
	if err := w.err(); err != nil {
		return Layout{}, err
	}
	w.begun = true
	return Layout{Ordered: true, BlockSize: lay.grain}, nil
}

// write appends to the output; errors stick in the bufio.Writer and come out of err.
func (w *vmdkStreamWriter) write(b []byte) {
	n, _ := w.out.Write(b)
	w.pos += int64(n)
}

func (w *vmdkStreamWriter) err() error {
	_, err := w.out.Write(nil) // a bufio.Writer's error is sticky
	return err
}

// vmdkGrains is what Encode leaves for Write: the records of a chunk's grains (marker and
// zlib stream, each padded to a sector), back to back.
type vmdkGrains struct {
	buf  []byte
	lens []int32 // bytes of each record
}

func (e *vmdkGrains) Write(p []byte) (int, error) {
	e.buf = append(e.buf, p...)
	return len(p), nil
}

var vmdkGrainPool = sync.Pool{New: func() any { return new(vmdkGrains) }}

// Encode compresses each grain of a data chunk into a grain record. It runs in the
// pipeline's workers.
func (w *vmdkStreamWriter) Encode(c *Chunk) error {
	e := vmdkGrainPool.Get().(*vmdkGrains)
	e.buf, e.lens = e.buf[:0], e.lens[:0]
	zw, _ := w.zlibs.Get().(*zlib.Writer)
	if zw == nil {
		var err error
		if zw, err = zlib.NewWriterLevel(e, vmdkDeflateLevel); err != nil {
			return err
		}
	}
	defer w.zlibs.Put(zw)
	grain := w.lay.grain
	for off := int64(0); off < c.Len; off += grain {
		data := c.Data[off:min(off+grain, c.Len)]
		if int64(len(data)) < grain {
			// The disk's last grain: VMware and VirtualBox inflate whole grains.
			full := make([]byte, grain)
			copy(full, data)
			data = full
		}
		start := len(e.buf)
		var mark [12]byte
		binary.LittleEndian.PutUint64(mark[:], uint64((c.Off+off)/vmdkSectorSize))
		e.buf = append(e.buf, mark[:]...)
		zw.Reset(e)
		if _, err := zw.Write(data); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		binary.LittleEndian.PutUint32(e.buf[start+8:], uint32(len(e.buf)-start-12))
		n := alignUp(int64(len(e.buf)-start), vmdkSectorSize)
		e.buf = append(e.buf, make([]byte, n-int64(len(e.buf)-start))...)
		e.lens = append(e.lens, int32(n))
	}
	c.Encoded = e
	return nil
}

// Write appends a data chunk's grain records (writing out the previous grain table first
// when a grain belongs to a later one); a zero chunk writes nothing.
func (w *vmdkStreamWriter) Write(c *Chunk) error {
	if err := vmdkCheckChunk(w.cfg.name, c, w.gpos, w.lay); err != nil {
		return err
	}
	w.gpos += c.Len
	if c.Zero() {
		return nil
	}
	if c.Encoded == nil {
		if err := w.Encode(c); err != nil {
			return err
		}
	}
	e, ok := c.Encoded.(*vmdkGrains)
	if !ok {
		return fmt.Errorf("%s: internal error: %v carries %T", w.cfg.name, c, c.Encoded)
	}
	defer func() {
		c.Encoded = nil
		vmdkGrainPool.Put(e)
	}()
	g := c.Off / w.lay.grain
	if int64(len(e.lens)) != (c.Len+w.lay.grain-1)/w.lay.grain {
		return fmt.Errorf("%s: internal error: %v encoded as %d grains", w.cfg.name, c, len(e.lens))
	}
	off := 0
	for i, n := range e.lens {
		if err := w.table(g + int64(i)); err != nil {
			return err
		}
		s := w.pos / vmdkSectorSize
		if s+int64(n)/vmdkSectorSize > vmdkMaxSector {
			return w.tooLarge()
		}
		w.write(e.buf[off : off+int(n)])
		off += int(n)
		w.gt.ents[(g+int64(i))%vmdkGTEsPerGT] = uint32(s)
		w.gt.used = true
	}
	return w.err()
}

// table makes grain g's table the current one, writing out the previous one.
func (w *vmdkStreamWriter) table(g int64) error {
	t := g / vmdkGTEsPerGT
	if t == w.gt.idx {
		return nil
	}
	if err := w.flushGT(); err != nil {
		return err
	}
	w.gt.idx = t
	return nil
}

// flushGT writes the current grain table behind its marker and enters it in the
// directory. A table with no grains is not written (its directory entry stays 0).
func (w *vmdkStreamWriter) flushGT() error {
	if !w.gt.used {
		return nil
	}
	if w.pos/vmdkSectorSize+1+vmdkGTSectors > vmdkMaxSector {
		return w.tooLarge()
	}
	vmdkMarker(w.sec[:], vmdkGTSectors, vmdkMarkerGT)
	w.write(w.sec[:])
	w.gd[w.gt.idx] = uint32(w.pos / vmdkSectorSize)
	w.write(w.gt.bytes())
	clear(w.gt.ents[:])
	w.gt.used = false
	return w.err()
}

func (w *vmdkStreamWriter) tooLarge() error {
	return fmt.Errorf("%s: the vmdk file would grow past 2 TiB, the most a hosted sparse extent can address (32-bit sector offsets)", w.cfg.name)
}

// Commit writes the last grain table, the grain directory, the footer and the
// end-of-stream marker, flushes, and (for a file) renames it into place.
func (w *vmdkStreamWriter) Commit() error {
	switch {
	case !w.begun:
		return fmt.Errorf("%s: Commit before Begin", w.cfg.name)
	case w.done:
		return fmt.Errorf("%s: already finished", w.cfg.name)
	case w.gpos != w.lay.size:
		return fmt.Errorf("%s: internal error: the chunks end at guest offset %d, the disk at %d", w.cfg.name, w.gpos, w.lay.size)
	}
	if err := w.flushGT(); err != nil {
		return err
	}
	vmdkMarker(w.sec[:], uint64(w.lay.gdSectors), vmdkMarkerGD)
	w.write(w.sec[:])
	gdAt := w.pos / vmdkSectorSize
	if gdAt > vmdkMaxSector {
		return w.tooLarge()
	}
	buf := make([]byte, min(w.lay.gdSectors*vmdkSectorSize, 64<<10))
	for i := int64(0); i < w.lay.gdSectors*vmdkSectorSize; i += int64(len(buf)) {
		clear(buf)
		for j := int64(0); j < int64(len(buf)) && (i+j)/4 < w.lay.gdEntries; j += 4 {
			binary.LittleEndian.PutUint32(buf[j:], w.gd[(i+j)/4])
		}
		w.write(buf[:min(int64(len(buf)), w.lay.gdSectors*vmdkSectorSize-i)])
	}
	vmdkMarker(w.sec[:], 1, vmdkMarkerFooter)
	w.write(w.sec[:])
	foot := w.hdr
	foot.gdOff = uint64(gdAt)
	foot.encode(w.sec[:])
	w.write(w.sec[:])
	vmdkMarker(w.sec[:], 0, vmdkMarkerEOS)
	w.write(w.sec[:])
	if err := w.out.Flush(); err != nil {
		return err
	}
	w.done = true
	if w.rf == nil {
		if d, ok := w.stdout.(interface{ Flush() error }); ok {
			if err := d.Flush(); err != nil {
				return writeError(w.cfg.name, "flushing", err)
			}
		}
		return nil
	}
	w.rf.Begin(w.pos)
	return w.rf.Commit()
}

// Abort removes the temporary file; on a stream, what went out cannot be taken back.
func (w *vmdkStreamWriter) Abort() error {
	w.done = true
	if w.rf == nil {
		return nil
	}
	return w.rf.Abort()
}
