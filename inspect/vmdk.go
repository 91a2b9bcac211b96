package inspect

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strings"
)

// VMware VMDK: a hosted sparse extent (magic "KDMV": monolithicSparse, streamOptimized, the
// extents of twoGbMaxExtentSparse) with its embedded text descriptor, or a text descriptor
// on its own (monolithicFlat, twoGbMaxExtentFlat, twoGbMaxExtentSparse, vmfs, …) naming
// extent files. Only monolithicSparse and streamOptimized are safe to accept from users:
// every other layout names host files (CVE-2022-47951), so Safety reports them, and reads
// follow extent files only with AllowBacking, through openRelated.
//
// Open reads the header (512 bytes), the embedded descriptor (at most
// maxDescriptorText bytes) and, when the size is known, the footer of a streamOptimized
// file (the last 1536 bytes). The grain directory and grain tables are read by the first
// lookup or by Check.

// VMDKInfo is the format-specific detail of a vmdk image. The first fields carry
// `qemu-img info`'s JSON names and meaning.
type VMDKInfo struct {
	// CreateType is the subformat as qemu reports it: for a hosted sparse file,
	// streamOptimized when its grains are compressed and monolithicSparse otherwise; for a
	// descriptor file, its createType.
	CreateType string           `json:"create-type"`
	CID        uint32           `json:"cid"`
	ParentCID  uint32           `json:"parent-cid"`
	Extents    []VMDKExtentInfo `json:"extents"`
	// DescriptorCreateType is the descriptor's createType when it differs from CreateType
	// (or when there is no descriptor: empty).
	DescriptorCreateType string          `json:"descriptor-create-type,omitempty"`
	ParentFileNameHint   string          `json:"parent-filename-hint,omitempty"`
	AdapterType          string          `json:"adapter-type,omitempty"`
	HWVersion            string          `json:"hw-version,omitempty"`
	Header               *VMDKHeaderInfo `json:"header,omitempty"`
}

// VMDKExtentInfo is one extent of the disk, in order.
type VMDKExtentInfo struct {
	// Filename is the extent's file as qemu names it (the image itself for a hosted
	// sparse file, else resolved against the descriptor's directory); empty for ZERO.
	Filename string `json:"filename"`
	// Format is the extent type (FLAT, SPARSE, ZERO, VMFS, …); empty for the sparse
	// extent of a hosted sparse file, as qemu reports it.
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ClusterSize int64  `json:"cluster-size,omitempty"`
	Compressed  bool   `json:"compressed,omitempty"`
	Access      string `json:"access,omitempty"` // RW, RDONLY, NOACCESS
	Offset      int64  `json:"offset,omitempty"` // FLAT: where the extent starts in its file, bytes
}

// VMDKHeaderInfo is the hosted sparse extent header (sizes and offsets in 512-byte
// sectors, as the header stores them). When the file has a streamOptimized footer, the
// values are the ones in force: the footer's when the header says GD_AT_END.
type VMDKHeaderInfo struct {
	Version           uint32   `json:"version"`
	Flags             uint32   `json:"flags"`
	FlagNames         []string `json:"flag-names,omitempty"`
	Capacity          uint64   `json:"capacity"`
	GrainSize         uint64   `json:"grain-size"`
	DescriptorOffset  uint64   `json:"descriptor-offset"`
	DescriptorSize    uint64   `json:"descriptor-size"`
	NumGTEsPerGT      uint32   `json:"num-gtes-per-gt"`
	RGDOffset         uint64   `json:"rgd-offset"`
	GDOffset          uint64   `json:"gd-offset"`
	GDAtEnd           bool     `json:"gd-at-end,omitempty"` // the header at offset 0 says GD_AT_END
	OverHead          uint64   `json:"overhead"`
	UncleanShutdown   bool     `json:"unclean-shutdown,omitempty"`
	CompressAlgorithm uint16   `json:"compress-algorithm"`
	Footer            bool     `json:"footer,omitempty"` // the file ends with a footer
}

var vmdkFlagNames = []struct {
	bit  uint32
	name string
}{
	{vmdkFlagNewlineTest, "valid-newline-test"},
	{vmdkFlagRGD, "redundant-gd"},
	{vmdkFlagZeroGrain, "zeroed-grain"},
	{vmdkFlagCompressed, "compressed-grains"},
	{vmdkFlagMarkers, "markers"},
}

func vmdkFlagList(f uint32) []string {
	var out []string
	for _, n := range vmdkFlagNames {
		if f&n.bit != 0 {
			out = append(out, n.name)
			f &^= n.bit
		}
	}
	if f != 0 {
		out = append(out, fmt.Sprintf("0x%x", f))
	}
	return out
}

// vmdkAllowedTypes are the create types that keep all data in the one file uploaded.
var vmdkAllowedTypes = map[string]bool{"monolithicSparse": true, "streamOptimized": true}

// vmdkQemuDescTypes are the create types qemu accepts in a descriptor file.
var vmdkQemuDescTypes = map[string]bool{
	"monolithicFlat": true, "vmfs": true, "vmfsSparse": true, "seSparse": true,
	"twoGbMaxExtentSparse": true, "twoGbMaxExtentFlat": true,
}

// maxVMDKExtents bounds the extents of one descriptor (twoGbMaxExtentSparse needs 1024
// for 2 TiB, 4096 for 8 TiB); with more, none is opened.
const maxVMDKExtents = 4096

// probeVMDK matches the sparse magics (KDMV, COWD) and, like qemu, a text descriptor whose
// first line that is not a comment or blank is "version=1", "version=2" or "version=3".
func probeVMDK(p *probeData) bool {
	h := p.head
	if len(h) >= 4 && (string(h[:4]) == vmdkMagic || string(h[:4]) == vmdkCOWDMagic) {
		return true
	}
	return vmdkProbeText(h)
}

// vmdkProbeText is qemu's vmdk_probe for text, over the 2048 bytes qemu probes.
func vmdkProbeText(b []byte) bool {
	b = b[:min(len(b), 2048)]
	for p := 0; p < len(b); {
		switch b[p] {
		case '#':
			for p < len(b) && b[p] != '\n' {
				p++
			}
			p++
			continue
		case ' ':
			for p < len(b) && b[p] == ' ' {
				p++
			}
			if p < len(b) && b[p] == '\r' {
				p++
			}
			if p == len(b) || b[p] != '\n' {
				return false
			}
			p++
			continue
		}
		for _, v := range []string{"version=1\n", "version=2\n", "version=3\n", "version=1\r\n", "version=2\r\n", "version=3\r\n"} {
			if bytes.HasPrefix(b[p:], []byte(v)) {
				return true
			}
		}
		return false
	}
	return false
}

type vmdkExtentKind uint8

const (
	vmdkExtFlat vmdkExtentKind = iota
	vmdkExtSparse
	vmdkExtZero
	vmdkExtUnreadable
)

// vmdkExtent is one extent in the guest address space.
type vmdkExtent struct {
	start, length int64
	kind          vmdkExtentKind
	r             io.ReaderAt // flat: the extent file
	fileOff       int64       // flat: where the extent starts in r
	fileSize      int64       // flat: r's size
	sp            *vmdkSparse // sparse
	err           error       // unreadable: why
	name          string      // for errors
}

type vmdkCore struct {
	virtual  int64
	extents  []*vmdkExtent
	info     VMDKInfo
	cluster  int64
	backing  string
	finds    []Finding
	sparse   *vmdkSparse // the image's own sparse extent (hosted sparse files)
	descOff  int64       // embedded descriptor, bytes (for check)
	descLen  int64
	delta    bool // holes read from the parent
	parent   *disk
	parentEr error
}

func openVMDK(o *opener) (core, error) {
	h := o.probe.head
	switch {
	case len(h) >= 4 && string(h[:4]) == vmdkMagic:
		return openVMDKHosted(o)
	case len(h) >= 4 && string(h[:4]) == vmdkCOWDMagic:
		return nil, unsupported(VMDK, "a VMFS sparse (COWD) extent on its own; open the descriptor that names it")
	case len(h) >= 8 && binary.LittleEndian.Uint64(h) == vmdkSESparse:
		return nil, unsupported(VMDK, "a seSparse extent on its own; open the descriptor that names it")
	}
	return openVMDKDescriptorFile(o)
}

// openVMDKHosted opens a file that begins with a hosted sparse extent header.
func openVMDKHosted(o *opener) (core, error) {
	b, err := readAt(o.r, 0, vmdkHeaderSize, VMDK, "header")
	if err != nil {
		return nil, err
	}
	head := decodeVMDKHeader(b)
	c := &vmdkCore{}
	window := qemuWindow(o.probe.head, vmdkSector)
	if head.Capacity == 0 && head.DescriptorOffset != 0 {
		// qemu reads such a file as a descriptor file whose text is in the sectors the
		// header names: its extents are other files.
		text, ok, err := c.embeddedDescriptor(o, head)
		if err != nil {
			return nil, err
		}
		if !ok {
			c.find(FindDescriptor, "the header has capacity 0 and names a descriptor that cannot be read")
		}
		c.find(FindDescriptor, "the sparse header has capacity 0, so its descriptor alone defines the disk (qemu then opens the extents it names)")
		return c.fromDescriptor(o, parseVMDKDescriptor(text), window)
	}
	sp, err := openVMDKSparse(o.r, o.size, o.sizeKnown, o.name)
	if err != nil {
		return nil, err
	}
	c.sparse = sp
	c.finds = append(c.finds, sp.finds...)
	text, _, err := c.embeddedDescriptor(o, sp.hdr)
	if err != nil {
		return nil, err
	}
	d := parseVMDKDescriptor(text)
	c.virtual = sp.capacity
	c.cluster = sp.grain
	c.extents = []*vmdkExtent{{start: 0, length: sp.capacity, kind: vmdkExtSparse, sp: sp, name: o.name}}
	c.info.CreateType = "monolithicSparse"
	if sp.compressed {
		c.info.CreateType = "streamOptimized"
	}
	c.info.Extents = []VMDKExtentInfo{{Filename: o.name, VirtualSize: sp.capacity, ClusterSize: sp.grain, Compressed: sp.compressed}}
	hd := sp.hdr
	c.info.Header = &VMDKHeaderInfo{
		Version: hd.Version, Flags: hd.Flags, FlagNames: vmdkFlagList(hd.Flags), Capacity: hd.Capacity,
		GrainSize: hd.GrainSize, DescriptorOffset: hd.DescriptorOffset, DescriptorSize: hd.DescriptorSize,
		NumGTEsPerGT: hd.NumGTEsPerGT, RGDOffset: hd.RGDOffset, GDOffset: hd.GDOffset,
		GDAtEnd: sp.head.GDOffset == vmdkGDAtEnd, OverHead: hd.OverHead, UncleanShutdown: hd.UncleanShutdown != 0,
		CompressAlgorithm: hd.CompressAlgorithm, Footer: sp.footer != nil,
	}

	// The descriptor of a file that must be self-contained.
	c.descriptorFindings(d)
	if d.hasType {
		if !vmdkAllowedTypes[d.createType] {
			c.find(FindCreateType, "createType %q is not monolithicSparse or streamOptimized: the disk may live in other files", clip(d.createType, 64))
		}
		if d.createType != c.info.CreateType {
			c.info.DescriptorCreateType = d.createType
			if vmdkAllowedTypes[d.createType] {
				c.find(FindDescriptor, "the descriptor says createType %q, but the header describes a %s extent", d.createType, c.info.CreateType)
			}
		}
	} else {
		c.find(FindCreateType, "the descriptor has no createType: the subformat cannot be checked")
	}
	self := false
	var others []string
	for _, e := range d.extents {
		if !self && e.typ == "SPARSE" && vmdkLocalName(e.file) {
			self = true
			if e.sectors*vmdkSector != sp.capacity || e.sectors > vmdkMaxOffset {
				c.find(FindDescriptor, "the extent line says %d sectors, the header's capacity is %d", e.sectors, sp.hdr.Capacity)
			}
			continue
		}
		others = append(others, vmdkDescribeExtent(e))
	}
	if len(others) > 0 {
		c.find(FindHostExtent, "the descriptor lists %d extent(s) besides the sparse extent in this file: %s", len(others), joinClip(others, 4))
	}
	c.identity(o, d, window)
	return c, nil
}

// embeddedDescriptor reads the descriptor the header names. ok is false when there is
// none to read.
func (c *vmdkCore) embeddedDescriptor(o *opener, h vmdkHeader) (string, bool, error) {
	off, n := h.DescriptorOffset, h.DescriptorSize
	if off == 0 {
		if n != 0 {
			c.find(FindDescriptor, "descriptorSize is %d sectors but descriptorOffset is 0", n)
		} else {
			c.find(FindDescriptor, "the file has no embedded descriptor")
		}
		return "", false, nil
	}
	if off > vmdkMaxOffset || n > vmdkMaxOffset {
		c.find(FindDescriptor, "the descriptor offset (%d) or size (%d sectors) is out of range", off, n)
		return "", false, nil
	}
	if off != 1 {
		c.find(FindDescriptor, "the descriptor is at sector %d, not at sector 1 where qemu and OpenStack read it", off)
	}
	offB, nB := int64(off)*vmdkSector, int64(n)*vmdkSector
	if nB > maxDescriptorBytes {
		c.find(FindDescriptor, "the descriptor region is %d bytes, more than 1 MiB", nB)
	}
	c.descOff, c.descLen = offB, nB
	readN := min(nB, maxDescriptorText)
	if o.sizeKnown {
		if !within(offB, nB, o.size) {
			c.find(FindPastEOF, "the descriptor (%d bytes at offset %d) extends past the end of the file (%d bytes)", nB, offB, o.size)
		}
		if offB >= o.size {
			return "", false, nil
		}
		readN = min(readN, o.size-offB)
	}
	b, err := readAt(o.r, offB, readN, VMDK, "descriptor")
	if err != nil {
		return "", false, err
	}
	return c.cutText(b, nB > maxDescriptorText, fmt.Sprintf("its %d sectors", n)), true, nil
}

// cutText ends descriptor bytes at their NUL. more says whether bytes beyond b belong to
// the descriptor too.
func (c *vmdkCore) cutText(b []byte, more bool, where string) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		if !isZero(b[i:]) {
			c.find(FindDescriptor, "bytes other than NUL follow the descriptor text (at byte %d of the descriptor)", i+bytes.IndexFunc(b[i:], func(r rune) bool { return r != 0 }))
		}
		return string(b[:i])
	}
	if more {
		c.find(FindDescriptor, "the descriptor text is longer than %d bytes, the most glimpse parses", maxDescriptorText)
		if j := bytes.LastIndexByte(b, '\n'); j >= 0 {
			b = b[:j+1]
		}
		return string(b)
	}
	if where != "" {
		c.find(FindDescriptor, "the descriptor text is not NUL-terminated within %s: qemu reads on into what follows", where)
	}
	return string(b)
}

// qemuWindow is the text qemu searches for CID, parentCID and parentFileNameHint: the
// bytes at off (0x200 in a hosted sparse file, 0 in a descriptor file), at most
// qemuDescWindow, up to the first NUL.
func qemuWindow(head []byte, off int) string {
	if off >= len(head) {
		return ""
	}
	w := head[off:min(len(head), off+qemuDescWindow)]
	if i := bytes.IndexByte(w, 0); i >= 0 {
		w = w[:i]
	}
	return string(w)
}

// openVMDKDescriptorFile opens a text descriptor file.
func openVMDKDescriptorFile(o *opener) (core, error) {
	h := o.probe.head
	probed := vmdkProbeText(h)
	if !probed && !bytes.Contains(h, []byte("createType")) {
		return nil, wrongFormat(VMDK, "neither a sparse extent header nor a text descriptor")
	}
	c := &vmdkCore{}
	if !probed {
		c.find(FindDescriptor, `the descriptor does not start with a "version=" line, so qemu detects it as vmdk only when told the format`)
	}
	if o.sizeKnown && o.size > maxDescriptorBytes {
		c.find(FindDescriptor, "the descriptor file is %d bytes, more than 1 MiB", o.size)
	}
	more := len(h) >= maxDescriptorText && (!o.sizeKnown || o.size > int64(len(h)))
	text := c.cutText(h[:min(len(h), maxDescriptorText)], more, "")
	return c.fromDescriptor(o, parseVMDKDescriptor(text), qemuWindow(h, 0))
}

// fromDescriptor builds the disk a descriptor describes: its extents in order.
func (c *vmdkCore) fromDescriptor(o *opener, d *vmdkDescriptor, window string) (core, error) {
	c.descriptorFindings(d)
	c.info.CreateType = d.createType
	if qt, ok := qemuDescValue(d.text, "createType", 128); !ok {
		c.find(FindDescriptor, "qemu cannot read a createType from this descriptor (invalid VMDK image descriptor)")
	} else if qt != d.createType {
		c.find(FindDescriptor, "qemu reads createType %q, the descriptor's own line says %q", clip(qt, 64), clip(d.createType, 64))
	} else if !vmdkQemuDescTypes[qt] {
		c.find(FindDescriptor, "qemu refuses createType %q in a descriptor file", clip(qt, 64))
	}
	if d.hasType && !vmdkAllowedTypes[d.createType] {
		c.find(FindCreateType, "createType %q keeps the disk in other files", clip(d.createType, 64))
	}
	if !d.hasType {
		c.find(FindCreateType, "the descriptor has no createType")
	}
	// qemu's view of the extents: what it would open and how big it would see the disk.
	if qe, ok, known := qemuExtents(d.text); !known {
		c.find(FindDescriptor, "the descriptor is built so that qemu's extent scan runs on across many lines: how qemu reads it was not determined")
	} else if !ok {
		c.find(FindDescriptor, "qemu rejects an extent line of this descriptor")
	} else if !vmdkSameExtents(qe, d.extents) {
		var qs int64
		for _, e := range qe {
			qs = satAdd(qs, satMul(e.sectors, vmdkSector))
		}
		c.find(FindDescriptor, "qemu reads %d extent(s) (%d bytes) from this descriptor, not the %d listed: readers disagree about the disk", len(qe), qs, len(d.extents))
	}

	var local, outside []string
	for _, e := range d.extents {
		if !e.namesFile() {
			continue
		}
		if vmdkLocalName(e.file) {
			local = append(local, fmt.Sprintf("%q", clip(e.file, 80)))
		} else {
			outside = append(outside, fmt.Sprintf("%q", clip(e.file, 80)))
		}
	}
	if len(outside) > 0 {
		c.find(FindHostExtent, "extents name files outside the image's directory: %s", joinClip(outside, 4))
	}
	if len(local) > 0 {
		c.find(FindHostExtent, "the disk is kept in %d other file(s): %s", len(local), joinClip(local, 4))
	}

	if len(d.extents) > maxVMDKExtents {
		c.find(FindTooLarge, "the descriptor lists %d extents, more than glimpse opens (%d)", len(d.extents), maxVMDKExtents)
	}
	opened := map[string]*vmdkExtentFile{}
	var start int64
	for _, e := range d.extents {
		length := e.sectors * vmdkSector
		if e.sectors > vmdkMaxOffset || start > math.MaxInt64-length {
			return nil, o.ferr(VMDK, "descriptor", "extent", -1, e.sectors, "line %d: the extents add up to more than 2^63 bytes", e.line)
		}
		x := &vmdkExtent{start: start, length: length, name: e.file}
		start += length
		ei := VMDKExtentInfo{Format: e.typ, VirtualSize: length, Access: e.access}
		if e.hasFile {
			ei.Filename = vmdkExtentPath(o.name, e.file)
		}
		if e.typ == "FLAT" {
			ei.Offset = satMul(e.offset, vmdkSector)
		}
		switch {
		case e.typ == "ZERO":
			x.kind = vmdkExtZero
		case e.access == "NOACCESS":
			x.kind, x.err = vmdkExtUnreadable, unsupported(VMDK, "extent %q is NOACCESS", clip(e.file, 80))
		case len(d.extents) > maxVMDKExtents:
			x.kind, x.err = vmdkExtUnreadable, unsupported(VMDK, "too many extents (%d)", len(d.extents))
		default:
			c.openExtent(o, e, x, &ei, opened)
		}
		c.extents = append(c.extents, x)
		c.info.Extents = append(c.info.Extents, ei)
	}
	c.virtual = start
	// qemu reports a cluster size when every extent is sparse with the same grain.
	for i, x := range c.extents {
		if x.kind != vmdkExtSparse || x.sp.grain != c.extents[0].sp.grain || x.sp.compressed != c.extents[0].sp.compressed {
			c.cluster = 0
			break
		}
		if i == 0 {
			c.cluster = x.sp.grain
		}
	}
	c.identity(o, d, window)
	return c, nil
}

// vmdkExtentFile is an extent file opened once however many extents name it.
type vmdkExtentFile struct {
	r    io.ReaderAt
	size int64
	err  error
}

// openExtent opens the file behind one extent (only with AllowBacking, through
// openRelated) and fills x and ei.
func (c *vmdkCore) openExtent(o *opener, e vmdkExtentLine, x *vmdkExtent, ei *VMDKExtentInfo, opened map[string]*vmdkExtentFile) {
	f := opened[e.file]
	if f == nil {
		r, size, err := o.openRelated(e.file, "vmdk extent")
		f = &vmdkExtentFile{r: r, size: size, err: err}
		if err != nil {
			f.r = nil
		}
		opened[e.file] = f
	}
	if f.err != nil {
		x.kind, x.err = vmdkExtUnreadable, f.err
		return
	}
	switch e.typ {
	case "FLAT", "VMFS":
		off := e.offset
		if off > vmdkMaxOffset {
			x.kind, x.err = vmdkExtUnreadable, o.ferr(VMDK, "descriptor", "offset", -1, off, "line %d: extent offset out of range", e.line)
			return
		}
		x.kind, x.r, x.fileOff, x.fileSize = vmdkExtFlat, f.r, off*vmdkSector, f.size
	case "SPARSE", "VMFSSPARSE": // qemu opens both by their magic
		var magic [8]byte
		if err := readZeroFill(f.r, magic[:], 0); err != nil {
			x.kind, x.err = vmdkExtUnreadable, err
			return
		}
		var sp *vmdkSparse
		var err error
		switch string(magic[:4]) {
		case vmdkCOWDMagic:
			sp, err = openVMDKCOWD(f.r, f.size, ei.Filename)
		case vmdkMagic:
			sp, err = openVMDKSparse(f.r, f.size, true, ei.Filename)
			if err == nil && sp.head.Capacity == 0 && sp.head.DescriptorOffset != 0 {
				err = unsupported(VMDK, "extent %q is itself a descriptor (capacity 0)", clip(e.file, 80))
			}
		default:
			err = o.ferr(VMDK, "extent", "magic", 0, nil, "extent %q is neither a hosted sparse (KDMV) nor a VMFS sparse (COWD) extent", clip(e.file, 80))
		}
		if err != nil {
			x.kind, x.err = vmdkExtUnreadable, err
			return
		}
		for _, fd := range sp.finds {
			c.find(fd.Code, "extent %q: %s", clip(e.file, 80), fd.Message)
		}
		if sp.capacity != x.length {
			c.find(FindDescriptor, "line %d: the extent is %d bytes, its file's header says %d (qemu uses the header)", e.line, x.length, sp.capacity)
		}
		x.kind, x.sp = vmdkExtSparse, sp
		ei.ClusterSize, ei.Compressed = sp.grain, sp.compressed
	default:
		x.kind, x.err = vmdkExtUnreadable, unsupported(VMDK, "%s extents", e.typ)
	}
}

// identity reads CID, parentCID and parentFileNameHint, compares them with what qemu reads
// from window, and reports a delta disk.
func (c *vmdkCore) identity(o *opener, d *vmdkDescriptor, window string) {
	c.info.CID, c.info.ParentCID = d.cid, d.parentCID
	if !d.hasParent {
		c.info.ParentCID = math.MaxUint32
	}
	c.info.AdapterType, c.info.HWVersion = d.adapter, d.hwVersion
	if qc, ok := qemuCID(window, "CID"); !ok {
		c.find(FindDescriptor, "qemu finds no CID in the descriptor and refuses to open the image")
	} else if d.hasCID && qc != d.cid {
		c.find(FindDescriptor, "qemu reads CID %08x, the descriptor's CID line says %08x", qc, d.cid)
	}
	if qp, ok := qemuCID(window, "parentCID"); !ok {
		c.find(FindDescriptor, "qemu finds no parentCID in the descriptor and refuses to open the image")
	} else if qp != c.info.ParentCID {
		c.find(FindDescriptor, "qemu reads parentCID %08x, the descriptor says %08x", qp, c.info.ParentCID)
	}
	hint := d.parentHint
	qh, qfound, qok := qemuParentHint(window)
	switch {
	case !qok:
		c.find(FindDescriptor, "qemu cannot read parentFileNameHint and refuses to open the image")
	case qfound && (!d.hasHint || qh != d.parentHint):
		c.find(FindDescriptor, "qemu reads parentFileNameHint %q, the descriptor's own line says %q", clip(qh, 80), clip(d.parentHint, 80))
		hint = qh
	}
	c.info.ParentFileNameHint = d.parentHint
	if d.hasParent && d.parentCID != math.MaxUint32 {
		c.find(FindBackingFile, "parentCID is %08x: this is a delta disk whose unwritten sectors come from a parent", d.parentCID)
	}
	if hint != "" || d.hasHint {
		c.find(FindBackingFile, "parentFileNameHint names a parent disk %q", clip(hint, 120))
	}
	if hint == "" {
		return
	}
	c.backing, c.delta = hint, true
	p, err := o.openRelatedImage(hint, VMDK, "vmdk parent")
	if err != nil {
		c.parentEr = err
		return
	}
	pc, ok := p.c.(*vmdkCore)
	if !ok || pc.info.CID != c.info.ParentCID {
		c.parentEr = fmt.Errorf("vmdk parent %q: its CID does not match parentCID %08x: %w", hint, c.info.ParentCID, ErrInvalid)
		return
	}
	c.parent = p
}

// descriptorFindings turns malformed descriptor lines into findings.
func (c *vmdkCore) descriptorFindings(d *vmdkDescriptor) {
	for _, p := range d.problems {
		c.find(FindDescriptor, "malformed descriptor: %s", p)
	}
	if d.nProblems > len(d.problems) {
		c.find(FindDescriptor, "malformed descriptor: %d more problems", d.nProblems-len(d.problems))
	}
}

func (c *vmdkCore) find(code, format string, args ...any) {
	const maxFindings = 64
	if len(c.finds) < maxFindings {
		c.finds = append(c.finds, Finding{code, fmt.Sprintf(format, args...)})
	}
}

// vmdkLocalName reports whether an extent file name is a plain name in the image's own
// directory: no directory separators, no drive, not "." or "..".
func vmdkLocalName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, `/\:`) && filepath.IsLocal(name)
}

// vmdkExtentPath names an extent file as qemu does: relative names are resolved in the
// descriptor's directory.
func vmdkExtentPath(image, file string) string {
	if filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(filepath.Dir(image), file)
}

func vmdkDescribeExtent(e vmdkExtentLine) string {
	if e.hasFile {
		return fmt.Sprintf("%s %s %q", e.access, e.typ, clip(e.file, 80))
	}
	return e.access + " " + e.typ
}

// vmdkSameExtents reports whether qemu's extents are the descriptor's RW extents of the
// types qemu opens, in order.
func vmdkSameExtents(q []qemuExtent, ext []vmdkExtentLine) bool {
	i := 0
	for _, e := range ext {
		switch e.typ {
		case "FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE":
		default:
			return false // qemu skips it: the disks differ
		}
		if e.access != "RW" {
			return false
		}
		if i >= len(q) {
			return false
		}
		qe := q[i]
		i++
		if qe.sectors != e.sectors || qe.typ != e.typ || qe.file != e.file || (e.typ == "FLAT" && qe.offset != e.offset) {
			return false
		}
	}
	return i == len(q)
}

func satMul(a, b int64) int64 {
	if v, ok := mul64(a, b); ok {
		return v
	}
	return math.MaxInt64
}

func satAdd(a, b int64) int64 {
	if v, ok := add64(a, b); ok {
		return v
	}
	return math.MaxInt64
}

func (c *vmdkCore) size() int64 { return c.virtual }

func (c *vmdkCore) describe(info *Info) {
	info.ClusterSize = c.cluster
	if c.backing != "" {
		info.BackingFilename = c.backing
		info.BackingFormat = string(VMDK)
	}
	vi := c.info
	vi.Extents = append([]VMDKExtentInfo(nil), c.info.Extents...)
	info.FormatSpecific = &FormatSpecific{Type: VMDK, Data: vi}
}

func (c *vmdkCore) findings() []Finding { return c.finds }

// extentAt finds the extent holding guest offset off (binary search, no allocation).
func (c *vmdkCore) extentAt(off int64) *vmdkExtent {
	lo, hi := 0, len(c.extents)-1
	for lo < hi {
		m := (lo + hi + 1) / 2
		if c.extents[m].start <= off {
			lo = m
		} else {
			hi = m - 1
		}
	}
	return c.extents[lo]
}

func (c *vmdkCore) lookup(off int64) (segment, error) {
	if len(c.extents) == 0 || off < 0 || off >= c.virtual {
		return segment{}, fmt.Errorf("vmdk: offset %d outside the disk", off)
	}
	x := c.extentAt(off)
	rel := off - x.start
	var s segment
	switch x.kind {
	case vmdkExtZero:
		return segment{kind: KindZero, length: x.length - rel, host: -1}, nil
	case vmdkExtFlat:
		host := x.fileOff + rel
		return segment{kind: KindData, length: x.length - rel, r: x.r, off: host, host: host}, nil
	case vmdkExtUnreadable:
		return segment{}, x.err
	default:
		var err error
		s, err = x.sp.lookup(rel, x.length)
		if err != nil {
			return segment{}, err
		}
	}
	if s.kind != KindHole || !c.delta {
		return s, nil
	}
	if c.parent == nil {
		return segment{}, c.parentEr
	}
	if off >= c.parent.Size() {
		return s, nil
	}
	ps, err := c.parent.lookup(off)
	if err != nil {
		return segment{}, err
	}
	ps.length = min(ps.length, s.length)
	ps.depth++
	return ps, nil
}

var _ core = (*vmdkCore)(nil)
