package inspect

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"strconv"
	"strings"
)

// An OVA is an OVF package in one tar archive (DSP0243 §5.3): the .ovf descriptor first,
// then optionally the manifest (.mf) and certificate (.cert), then the files its References
// list. glimpse walks the tar headers itself over the io.ReaderAt, so that the data offset
// of every member is known exactly and member data is never read while walking: the disks
// are opened in place, as images of their own, through the format table, and the manifest's
// digests are computed through o.digest, which the stream inspector computes as the bytes
// pass. Reads go through o.r.ReadAt only, and their errors pass through wrapped.

// Limits of the OVA walk, each with its reason.
const (
	tarBlock = 512
	// maxOVAMembers caps the members recorded. An OVA holds a descriptor, a manifest, a
	// certificate and a handful of disks and ISO images; 256 is far beyond that and keeps
	// the member list (names up to maxOVAName) within a few hundred KiB for the stream
	// inspector.
	maxOVAMembers = 256
	// maxOVAHeaders caps the tar headers read, counting the pax and GNU long-name headers
	// that may precede every member, so that the walk is bounded whatever the archive holds.
	maxOVAHeaders = 4 * maxOVAMembers
	// maxTarMeta caps a pax extended header or a GNU long name. A path is at most a few KiB;
	// archive/tar allows 1 MiB, which is more than the stream inspector's whole budget.
	maxTarMeta = 64 << 10
	// maxOVAName caps a member name kept in the member list (PATH_MAX is 4096; no real OVA
	// member has a name a tenth as long). Longer names are cut and reported.
	maxOVAName = 1024
	// maxOVAManifest caps the manifest: one line per file, under 200 bytes even with SHA-512,
	// so 64 KiB covers far more files than maxOVAMembers.
	maxOVAManifest = 64 << 10
	// maxTarSparseBlocks caps the extension blocks of a GNU sparse header that are skipped.
	maxTarSparseBlocks = 1024
	// maxOVADisks caps the disks opened as images: each costs a probe and its metadata.
	maxOVADisks = 32
	// maxOVAFindings caps the findings of one archive, its disks' included.
	maxOVAFindings = 64
)

// OVAInfo is the format-specific detail of an OVA.
type OVAInfo struct {
	// Descriptor is the member that holds the OVF descriptor.
	Descriptor string      `json:"descriptor,omitempty"`
	Members    []OVAMember `json:"members"`
	// Manifest is the .mf member and what verifying it found.
	Manifest *OVAManifest `json:"manifest,omitempty"`
	// OVF is the descriptor's summary.
	OVF *OVFInfo `json:"ovf,omitempty"`
	// Disks are the DiskSection's disks and what each member holds.
	Disks []OVADisk `json:"disks,omitempty"`
	// SelectedDisk is the index in Disks of the disk that ReadAt reads (OpenOptions.Disk);
	// -1 when there is none.
	SelectedDisk int `json:"selected-disk"`
}

// OVAMember is one member of the archive.
type OVAMember struct {
	Name string `json:"name"`
	// Type is "file", or what else the member is: "directory", "symlink", "hardlink",
	// "char-device", "block-device", "fifo", "sparse", "volume-label", …
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Offset is where the member's data starts in the archive.
	Offset int64  `json:"data-offset"`
	Link   string `json:"link,omitempty"`
}

// OVAManifest is the manifest member and its verification.
type OVAManifest struct {
	Member string `json:"member"`
	// Algorithm is "sha1", "sha256" or "sha512", or "mixed" when the lines differ.
	Algorithm string             `json:"algorithm,omitempty"`
	Entries   []OVAManifestEntry `json:"entries,omitempty"`
}

// OVAManifestEntry is one manifest line and its result: "ok", "mismatch", "missing" (no
// such member), "not-a-file", or "truncated" (the member's data runs past the archive).
type OVAManifestEntry struct {
	Name      string `json:"name"`
	Algorithm string `json:"algorithm"`
	Digest    string `json:"digest"`
	Result    string `json:"result"`
}

// OVADisk is one disk of the descriptor's DiskSection.
type OVADisk struct {
	DiskID string `json:"disk-id"`
	Member string `json:"member,omitempty"`
	// Format is the format of the member's content, as glimpse probed it.
	Format Format `json:"format,omitempty"`
	// DeclaredFormat is the descriptor's format URI (informative: glimpse goes by content).
	DeclaredFormat string `json:"declared-format,omitempty"`
	// VirtualSize is the member's virtual size, or the descriptor's capacity when the member
	// could not be opened.
	VirtualSize int64 `json:"virtual-size"`
	Capacity    int64 `json:"capacity"`
	// Error says why the disk could not be opened; empty when it was, or when the disk is an
	// empty disk (no file) that reads as zeros.
	Error string `json:"error,omitempty"`
}

type ovaMember struct {
	OVAMember
	regular bool
}

type ovaChild struct {
	d *disk
	m *ovaMember
}

type ovaDisk struct {
	d      *disk
	member *ovaMember
	empty  bool  // no fileRef: a blank disk created at deployment; reads as zeros
	err    error // why d is nil (when not empty)
}

type ovaCore struct {
	info     OVAInfo
	disks    []*ovaDisk // parallel to info.Disks
	opened   []ovaChild // every disk member opened, once
	children []Info
	sel      int
	vsize    int64
	finds    []Finding
	problems []Problem // for Check: archive, manifest and disk-open problems
}

// ovaFindings collects the archive's findings and the matching Check problems.
type ovaFindings struct {
	ovfFindings
	c *ovaCore
}

func (f *ovaFindings) problem(code, structure string, off int64, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.add(code, "%s", msg)
	if len(f.c.problems) < maxOVAFindings {
		f.c.problems = append(f.c.problems, Problem{Kind: Corruption, Structure: structure, Offset: off, Message: msg})
	}
}

func (f *ovaFindings) addFinding(x Finding) {
	if len(f.list) >= f.limit() {
		f.dropped++
		return
	}
	f.list = append(f.list, x)
}

// tarHeader is what glimpse reads from one 512-byte tar header.
type tarHeader struct {
	name, link string
	size       int64
	typeflag   byte
	magic      string // "ustar" (POSIX, pax), "gnu", or "" (v7)
}

// tarNumber parses a numeric field: octal ASCII, or GNU's base-256 (high bit set) for values
// that do not fit. Negative base-256 values and overflow are refused.
func tarNumber(b []byte) (int64, bool) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0]&0x40 != 0 {
			return 0, false // negative
		}
		v := uint64(b[0] & 0x3f)
		for _, c := range b[1:] {
			if v > math.MaxInt64>>8 {
				return 0, false
			}
			v = v<<8 | uint64(c)
		}
		return int64(v), true
	}
	s := strings.Trim(string(b), " \x00")
	if s == "" {
		return 0, true
	}
	v, err := strconv.ParseUint(s, 8, 63)
	return int64(v), err == nil
}

// tarChecksumOK verifies a header's checksum: the sum of its bytes with the checksum field
// read as spaces, unsigned (POSIX) or signed (some historic tars).
func tarChecksumOK(b []byte) bool {
	stored, ok := tarNumber(b[148:156])
	if !ok {
		return false
	}
	var u, s int64
	for i, c := range b[:tarBlock] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		u += int64(c)
		s += int64(int8(c))
	}
	return stored == u || stored == s
}

func parseTarHeader(b []byte) (tarHeader, string) {
	h := tarHeader{typeflag: b[156], name: cstring(b[0:100]), link: cstring(b[157:257])}
	switch {
	case string(b[257:263]) == "ustar\x00":
		h.magic = "ustar"
		if prefix := cstring(b[345:500]); prefix != "" {
			h.name = prefix + "/" + h.name
		}
	case string(b[257:265]) == "ustar  \x00":
		h.magic = "gnu"
	}
	size, ok := tarNumber(b[124:136])
	if !ok {
		return h, fmt.Sprintf("size field %q is not a number", strings.Trim(string(b[124:136]), "\x00"))
	}
	h.size = size
	return h, ""
}

// tarHeaderOnly reports types whose size field does not count data blocks (archive/tar
// treats them so too): links, devices, directories and fifos.
func tarHeaderOnly(t byte) bool {
	switch t {
	case '1', '2', '3', '4', '5', '6':
		return true
	}
	return false
}

func tarTypeName(t byte, name string) (string, bool) {
	switch t {
	case 0:
		if strings.HasSuffix(name, "/") { // pre-POSIX tars mark directories so
			return "directory", false
		}
		return "file", true
	case '0', '7': // '7' is a contiguous file: a regular file to everyone but a few old systems
		return "file", true
	case '1':
		return "hardlink", false
	case '2':
		return "symlink", false
	case '3':
		return "char-device", false
	case '4':
		return "block-device", false
	case '5', 'D':
		return "directory", false
	case '6':
		return "fifo", false
	case 'S':
		return "sparse", false
	case 'V':
		return "volume-label", false
	case 'M':
		return "multi-volume", false
	}
	return fmt.Sprintf("type %q", t), false
}

// tarPending is what pax and GNU long-name headers say about the member that follows.
type tarPending struct {
	path, link       string
	hasPath, hasLink bool
	long, longLink   string
	size             int64 // -1: none
	sparse           bool
}

// parsePAX reads pax records ("%d %s=%s\n") into p. Only path, linkpath, size and the
// GNU.sparse keys matter here.
func parsePAX(data []byte, p *tarPending) string {
	for len(data) > 0 {
		if isZero(data) { // NUL padding after the last record
			break
		}
		sp := bytes.IndexByte(data, ' ')
		if sp <= 0 || sp > 20 {
			return "pax record without a length"
		}
		n, err := strconv.Atoi(string(data[:sp]))
		if err != nil || n <= sp+2 || n > len(data) || data[n-1] != '\n' {
			return fmt.Sprintf("pax record length %q does not fit the header", data[:sp])
		}
		key, val, ok := strings.Cut(string(data[sp+1:n-1]), "=")
		if !ok {
			return "pax record without '='"
		}
		switch {
		case key == "path":
			p.path, p.hasPath = val, true
		case key == "linkpath":
			p.link, p.hasLink = val, true
		case key == "size":
			v, err := strconv.ParseInt(val, 10, 64)
			if err != nil || v < 0 {
				return fmt.Sprintf("pax size %q is not a byte count", val)
			}
			p.size = v
		case strings.HasPrefix(key, "GNU.sparse."):
			p.sparse = true
			if key == "GNU.sparse.name" {
				p.path, p.hasPath = val, true
			}
		}
		data = data[n:]
	}
	return ""
}

func (p *tarPending) memberName(h tarHeader) (name, link string) {
	name, link = h.name, h.link
	if p.long != "" {
		name = p.long
	}
	if p.hasPath {
		name = p.path
	}
	if p.longLink != "" {
		link = p.longLink
	}
	if p.hasLink {
		link = p.link
	}
	return name, link
}

func isOVFName(name string) bool { return strings.EqualFold(path.Ext(name), ".ovf") }

// probeOVA matches a ustar (POSIX, pax or GNU) archive that holds an .ovf member among the
// headers in the head window: the descriptor is first in a well-formed OVA, and a
// misordered one whose small first members fit the window is still found (and reported).
// A tar without a descriptor (cot/test.tar) is not an OVA: nothing in it describes a virtual
// system, and qemu-img takes it as raw too. Declared as ova, it opens with FindOVFStructure.
//
// A partial window (shorter than probeHead while the file goes on: the stream inspector
// probes its first 512 bytes) cannot show the name in a pax or GNU long-name header whose
// data lies beyond it, nor what follows a leading directory: running off it before any
// file member, the answer is yes. Once a file that is not the descriptor has been seen
// (a plain tar, or a misordered OVA), it is no until the full window shows a descriptor.
func probeOVA(p *probeData) bool {
	head := p.head
	partial := len(head) < probeHead && (p.size == unknownSize || p.size > int64(len(head)))
	sawFile := false
	pend := tarPending{size: -1}
	off := 0
	for range 16 {
		if off+tarBlock > len(head) {
			return partial && off > 0 && !sawFile
		}
		blk := head[off : off+tarBlock]
		if isZero(blk) || !tarChecksumOK(blk) {
			return false
		}
		h, why := parseTarHeader(blk)
		if why != "" || (off == 0 && h.magic == "") || (h.typeflag == 'S' && blk[482] != 0) {
			return false
		}
		size := h.size
		if tarHeaderOnly(h.typeflag) {
			size = 0
		}
		if size > int64(len(head)) {
			size = int64(len(head)) // past the window: the next header is not in it either
		}
		end := off + tarBlock + int(size)
		switch h.typeflag {
		case 'x', 'L':
			if end > len(head) {
				return partial && !sawFile
			}
			if h.typeflag == 'x' {
				parsePAX(head[off+tarBlock:end], &pend)
			} else {
				pend.long = cstring(head[off+tarBlock : end])
			}
		case 'g', 'K':
		default:
			name, _ := pend.memberName(h)
			if isOVFName(name) {
				return true
			}
			if typ, _ := tarTypeName(h.typeflag, name); typ != "directory" {
				sawFile = true
			}
			pend = tarPending{size: -1}
		}
		off = end + (tarBlock-int(size)%tarBlock)%tarBlock
	}
	return false
}

// ovaWalk reads the tar headers, records the members, and hands each to visit as soon as
// its header is read, before the walk goes past its data: a stream inspector learns which
// bytes to keep and to hash only from the reads and digests asked for before those bytes
// pass. Problems with the archive become findings and end the walk; read errors and
// visit's errors pass through.
func ovaWalk(o *opener, f *ovaFindings, visit func(*ovaMember) error) error {
	members := 0
	pend := tarPending{size: -1}
	off := int64(0)
	for headers := 0; ; headers++ {
		if headers == maxOVAHeaders {
			f.add(FindTooLarge, "more than %d tar headers: the rest of the archive was not read", maxOVAHeaders)
			return nil
		}
		if o.sizeKnown && off >= o.size {
			return nil // no end-of-archive blocks: tar accepts an archive that just ends
		}
		blk, err := readAt(o.r, off, tarBlock, OVA, "tar header")
		if err != nil {
			var fe *FormatError
			if errors.As(err, &fe) {
				f.problem(FindPastEOF, "tar header", off, "the archive ends inside the tar header at offset %d", off)
				return nil
			}
			return fmt.Errorf("tar header at offset %d: %w", off, err)
		}
		if isZero(blk) {
			return nil // end of archive
		}
		if !tarChecksumOK(blk) {
			f.problem(FindMalformed, "tar header", off, "tar header at offset %d has a bad checksum: the rest of the archive cannot be walked", off)
			return nil
		}
		h, why := parseTarHeader(blk)
		if why != "" {
			f.problem(FindMalformed, "tar header", off, "tar header at offset %d: %s", off, why)
			return nil
		}
		dataOff := off + tarBlock
		if h.typeflag == 'S' && blk[482] != 0 { // GNU sparse: extension blocks precede the data
			for i := 0; ; i++ {
				if i == maxTarSparseBlocks {
					f.problem(FindMalformed, "tar header", off, "sparse member at offset %d has more than %d extension headers", off, maxTarSparseBlocks)
					return nil
				}
				ext, err := readAt(o.r, dataOff, tarBlock, OVA, "tar sparse header")
				if err != nil {
					var fe *FormatError
					if errors.As(err, &fe) {
						f.problem(FindPastEOF, "tar header", dataOff, "the archive ends inside a sparse header at offset %d", dataOff)
						return nil
					}
					return fmt.Errorf("tar sparse header at offset %d: %w", dataOff, err)
				}
				dataOff += tarBlock
				if ext[504] == 0 {
					break
				}
			}
		}
		meta := h.typeflag == 'x' || h.typeflag == 'g' || h.typeflag == 'L' || h.typeflag == 'K'
		size := h.size
		if tarHeaderOnly(h.typeflag) {
			size = 0
		} else if !meta && pend.size >= 0 {
			size = pend.size
		}
		end, ok1 := add64(dataOff, size)
		next, ok2 := add64(end, (tarBlock-size%tarBlock)%tarBlock)
		if !ok1 || !ok2 {
			f.problem(FindMalformed, "tar header", off, "tar header at offset %d: size %d overflows", off, size)
			return nil
		}
		if meta {
			if h.typeflag == 'g' { // global pax records: nothing glimpse needs
				off = next
				continue
			}
			if size > maxTarMeta {
				f.problem(FindTooLarge, "tar header", off, "extended header at offset %d holds %d bytes, above the limit of %d: the rest of the archive was not read", off, size, maxTarMeta)
				return nil
			}
			data, err := readAt(o.r, dataOff, size, OVA, "tar extended header")
			if err != nil {
				var fe *FormatError
				if errors.As(err, &fe) {
					f.problem(FindPastEOF, "tar header", dataOff, "the archive ends inside the extended header at offset %d", off)
					return nil
				}
				return fmt.Errorf("tar extended header at offset %d: %w", off, err)
			}
			switch h.typeflag {
			case 'x':
				if why := parsePAX(data, &pend); why != "" {
					f.problem(FindMalformed, "tar header", off, "pax header at offset %d: %s", off, why)
					return nil
				}
			case 'L':
				pend.long = cstring(data)
			case 'K':
				pend.longLink = cstring(data)
			}
			off = next
			continue
		}
		if members == maxOVAMembers {
			f.add(FindTooLarge, "more than %d members: the rest of the archive was not read", maxOVAMembers)
			return nil
		}
		members++
		name, link := pend.memberName(h)
		typ, regular := tarTypeName(h.typeflag, name)
		if pend.sparse {
			typ, regular = "sparse", false
		}
		pend = tarPending{size: -1}
		m := &ovaMember{OVAMember: OVAMember{Name: name, Type: typ, Size: size, Offset: dataOff, Link: link}, regular: regular}
		if len(m.Name) > maxOVAName {
			m.Name = m.Name[:maxOVAName]
			f.add(FindOVAMemberPath, "member at offset %d has a name longer than %d bytes", off, maxOVAName)
		} else if why := ovfNameProblem(strings.TrimSuffix(name, "/"), false); why != "" {
			f.add(FindOVAMemberPath, "member %q %s: extracting it would write outside the target directory", name, why)
		}
		if len(m.Link) > maxOVAName {
			m.Link = m.Link[:maxOVAName]
		}
		if !regular {
			what := typ
			if link != "" {
				what += " to " + strconv.Quote(m.Link)
			}
			f.add(FindOVAMemberType, "member %q is a %s, not a regular file: extracting it may reach outside the target directory or block", m.Name, what)
		}
		if err := visit(m); err != nil {
			return err
		}
		if o.pastEOF(dataOff, size) {
			f.problem(FindPastEOF, "tar member", dataOff, "member %q: its %d bytes at offset %d run past the end of the archive (%d bytes)", m.Name, size, dataOff, o.size)
			return nil
		}
		off = next
	}
}

// ovaOpen is the state of one openOVA, fed member by member in archive order.
type ovaOpen struct {
	o       *opener
	c       *ovaCore
	f       *ovaFindings
	digest  func(off, n int64, algo string) ([]byte, error)
	members []*ovaMember
	byName  map[string]*ovaMember // by cleaned name; the last copy, as extraction leaves it
	ovfSeen bool                  // the first .ovf member has been met
	ovf     *OVFInfo
	// diskFiles are the cleaned names of the members that hold the DiskSection's disks
	// (plain files only: compressed and chunked ones cannot be read in place).
	diskFiles map[string]bool
	mf        *ovaMember
	lines     []manifestLine
	lineFor   map[string]int // cleaned name → index in lines and in the manifest's entries
	opened    map[*ovaMember]*ovaOpened
	// deferred is the first digest error that is not about the archive (the stream
	// inspector's "not yet"): the walk goes on, so that the reads it needs are asked for,
	// and the error is returned at the end.
	deferred error
}

type ovaOpened struct {
	d   *disk
	err error
}

// openOVA walks the archive once. The descriptor is parsed, the manifest read, each listed
// member's digest asked for, and each disk opened, as the walk reaches them; what the order
// of the archive left undone (a descriptor after its disks) is done at the end.
func openOVA(o *opener) (core, error) {
	blk, err := readAt(o.r, 0, tarBlock, OVA, "tar header")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, wrongFormat(OVA, "shorter than a tar header")
		}
		return nil, err
	}
	if isZero(blk) || !tarChecksumOK(blk) {
		return nil, wrongFormat(OVA, "no tar header at offset 0")
	}
	c := &ovaCore{sel: -1}
	s := &ovaOpen{o: o, c: c, f: &ovaFindings{ovfFindings: ovfFindings{max: maxOVAFindings}, c: c},
		byName: map[string]*ovaMember{}, opened: map[*ovaMember]*ovaOpened{}, digest: o.digest}
	if s.digest == nil {
		s.digest = func(off, n int64, algo string) ([]byte, error) { return digestAt(o.r, off, n, algo) }
	}
	if err := ovaWalk(o, s.f, s.visit); err != nil {
		c.close()
		return nil, err
	}
	if err := s.finish(); err != nil {
		c.close()
		return nil, err
	}
	c.finds = s.f.done()
	return c, nil
}

// visit handles one member as soon as its header has been read.
func (s *ovaOpen) visit(m *ovaMember) error {
	c := s.c
	key := path.Clean(m.Name)
	if _, dup := s.byName[key]; dup {
		s.f.add(FindOVAMemberPath, "member name %q appears more than once: an extractor keeps the last copy, a reader may see the first", m.Name)
	}
	s.byName[key] = m
	s.members = append(s.members, m)
	c.info.Members = append(c.info.Members, m.OVAMember)
	switch {
	case !s.ovfSeen && isOVFName(m.Name):
		s.ovfSeen = true
		if m.regular {
			if err := s.descriptor(m); err != nil {
				return err
			}
		}
	case s.mf == nil && strings.EqualFold(path.Ext(m.Name), ".mf"):
		s.mf = m
		if err := s.manifest(m); err != nil {
			return err
		}
		for _, prev := range s.members { // the descriptor, and whatever came before
			s.verify(prev)
		}
		return nil
	}
	s.verify(m)
	if s.mf == nil && s.o.streaming && m.regular && m.Size > 0 {
		// A manifest may still follow (VirtualBox and glimpse's own Pack put it last): a
		// stream cannot go back for the member's bytes then, so it hashes them now with the
		// algorithms OVF 1.0 and 2.0 manifests use (SHA1, SHA256). A SHA512 manifest after
		// its members remains unverifiable on a stream and is reported so.
		for _, algo := range [...]string{"sha1", "sha256"} {
			s.digest(m.Offset, m.Size, algo) // the sum is kept until verify asks for it
		}
	}
	if s.diskFiles[key] && m.regular {
		return s.openDisk(m)
	}
	return nil
}

// descriptor parses the OVF member.
func (s *ovaOpen) descriptor(m *ovaMember) error {
	info, finds, err := parseOVFAt(s.o.r, m.Offset, m.Size, m.Name+": ")
	switch {
	case errors.Is(err, errOVFTooLarge):
		s.f.problem(FindTooLarge, "descriptor", m.Offset, "descriptor %q is %d bytes, above the limit of %d: glimpse does not read it", m.Name, m.Size, maxOVFSize)
		return nil
	case err != nil:
		return fmt.Errorf("descriptor %q: %w", m.Name, err)
	}
	s.ovf = info
	s.c.info.OVF = info
	s.c.info.Descriptor = m.Name
	for _, x := range finds {
		s.f.addFinding(x)
	}
	s.diskFiles = map[string]bool{}
	for _, d := range info.Disks {
		if file, ok := ovaFileOf(info, d); ok && ovfHrefProblem(file.Href) == "" && ovaPlain(file) {
			s.diskFiles[path.Clean(file.Href)] = true
		}
	}
	return nil
}

// ovaFileOf is the References file a disk names.
func ovaFileOf(info *OVFInfo, d OVFDisk) (OVFFile, bool) {
	if d.FileRef == "" {
		return OVFFile{}, false
	}
	for _, f := range info.Files {
		if f.ID == d.FileRef {
			return f, true
		}
	}
	return OVFFile{}, false
}

// ovaPlain reports whether a file is stored as it is: not compressed, not chunked.
func ovaPlain(f OVFFile) bool {
	return (f.Compression == "" || f.Compression == "identity") && f.ChunkSize == 0
}

// manifest reads and parses the .mf member.
func (s *ovaOpen) manifest(mf *ovaMember) error {
	c, f := s.c, s.f
	c.info.Manifest = &OVAManifest{Member: mf.Name}
	if !mf.regular {
		f.problem(FindOVAManifest, "manifest", mf.Offset, "the manifest %q is a %s, not a file", mf.Name, mf.Type)
		return nil
	}
	if mf.Size > maxOVAManifest {
		f.problem(FindTooLarge, "manifest", mf.Offset, "the manifest %q is %d bytes, above the limit of %d: it was not verified", mf.Name, mf.Size, maxOVAManifest)
		return nil
	}
	data, err := readAt(s.o.r, mf.Offset, mf.Size, OVA, "manifest")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil // truncated: the walk reports it
		}
		return fmt.Errorf("manifest %q: %w", mf.Name, err)
	}
	lines, bad := ovaParseManifest(data)
	for _, b := range bad {
		f.problem(FindOVAManifest, "manifest", mf.Offset, "manifest %q: %s", mf.Name, b)
	}
	if len(lines) > maxOVAMembers {
		f.problem(FindTooLarge, "manifest", mf.Offset, "manifest %q lists %d files, more than the %d verified", mf.Name, len(lines), maxOVAMembers)
		lines = lines[:maxOVAMembers]
	}
	s.lines = lines
	s.lineFor = map[string]int{}
	for i, l := range lines {
		s.lineFor[path.Clean(l.name)] = i
		c.info.Manifest.Entries = append(c.info.Manifest.Entries, OVAManifestEntry{Name: l.name, Algorithm: l.algo, Digest: hex.EncodeToString(l.sum)})
		switch a := c.info.Manifest.Algorithm; {
		case a == "":
			c.info.Manifest.Algorithm = l.algo
		case a != l.algo:
			c.info.Manifest.Algorithm = "mixed"
		}
	}
	return nil
}

// verify checks a member against its manifest line, if the manifest has been read and
// lists it. The digest comes from o.digest; an error that is not about the archive is kept
// for the end, and the walk goes on.
func (s *ovaOpen) verify(m *ovaMember) {
	i, ok := s.lineFor[path.Clean(m.Name)]
	if !ok || s.c.info.Manifest.Entries[i].Result != "" {
		return
	}
	l, e, mf, f := s.lines[i], &s.c.info.Manifest.Entries[i], s.mf, s.f
	switch {
	case !m.regular:
		e.Result = "not-a-file"
		f.problem(FindOVAManifest, "manifest", mf.Offset, "manifest %q lists %q, which is a %s, not a file", mf.Name, l.name, m.Type)
		return
	case s.o.pastEOF(m.Offset, m.Size):
		e.Result = "truncated"
		f.problem(FindOVAManifest, "manifest", m.Offset, "manifest %q lists %q, whose data runs past the end of the archive", mf.Name, l.name)
		return
	}
	sum, err := s.digest(m.Offset, m.Size, l.algo)
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			e.Result = "truncated"
			f.problem(FindOVAManifest, "manifest", m.Offset, "manifest %q lists %q, whose data could not be read in full", mf.Name, l.name)
		} else if s.deferred == nil {
			s.deferred = fmt.Errorf("computing the %s digest of %q: %w", l.algo, m.Name, err)
		}
		return
	}
	if bytes.Equal(sum, l.sum) {
		e.Result = "ok"
		return
	}
	e.Result = "mismatch"
	f.problem(FindOVAManifest, "manifest", m.Offset, "%s digest of %q is %x, the manifest %q says %x", strings.ToUpper(l.algo), l.name, sum, mf.Name, l.sum)
}

// openDisk opens a member that holds a disk, once, in place.
func (s *ovaOpen) openDisk(m *ovaMember) error {
	if s.opened[m] != nil {
		return nil
	}
	c, f := s.c, s.f
	if len(c.opened) == maxOVADisks {
		s.opened[m] = &ovaOpened{err: fmt.Errorf("more than %d disks: %q not opened", maxOVADisks, m.Name)}
		f.add(FindTooLarge, "more than %d disk members: %q was not inspected", maxOVADisks, m.Name)
		return nil
	}
	child, err := ovaOpenDisk(s.o, m)
	if err != nil {
		code := ovaDiskErrorCode(err)
		if code == "" {
			return fmt.Errorf("disk member %q: %w", m.Name, err)
		}
		s.opened[m] = &ovaOpened{err: err}
		msg := strings.TrimPrefix(err.Error(), ovaChildName(s.o, m)+": ")
		f.problem(code, m.Name, m.Offset, "%s: %s", m.Name, msg)
		return nil
	}
	s.opened[m] = &ovaOpened{d: child}
	c.opened = append(c.opened, ovaChild{child, m})
	for _, x := range child.Safety() {
		f.addFinding(Finding{x.Code, m.Name + ": " + x.Message})
	}
	return nil
}

// finish does what needs the whole archive: the descriptor's place, manifest lines that
// name no member, the References, the disks in DiskSection order (opening those that came
// before the descriptor), and the selected disk.
func (s *ovaOpen) finish() error {
	o, c, f := s.o, s.c, s.f
	ovaDescriptor(s.members, f)
	if c.info.Manifest != nil {
		for i := range c.info.Manifest.Entries {
			e := &c.info.Manifest.Entries[i]
			if e.Result == "" && s.byName[path.Clean(e.Name)] == nil {
				e.Result = "missing"
				f.problem(FindOVAManifest, "manifest", s.mf.Offset, "manifest %q lists %q, which is not in the archive", s.mf.Name, e.Name)
			}
		}
	}
	// Members the walk met before the manifest or before the descriptor: a file can be
	// read in any order (a stream cannot, and says so through its errors).
	for _, m := range s.members {
		s.verify(m)
	}
	if s.ovf != nil {
		ovaCheckReferences(s.ovf, s.byName, f)
		for _, d := range s.ovf.Disks {
			if err := s.addDisk(d); err != nil {
				return err
			}
		}
	}
	if s.deferred != nil {
		return s.deferred
	}
	// The children are the disks the descriptor's disks use (of duplicate members, the
	// last copy; the findings of every copy opened are reported all the same).
	seen := map[*disk]bool{}
	for _, d := range c.disks {
		if d.d != nil && !seen[d.d] {
			seen[d.d] = true
			c.children = append(c.children, d.d.Info())
		}
	}
	if s.ovf == nil {
		if o.opt.Disk != "" {
			return fmt.Errorf("%s: no disk %q: the archive has no readable descriptor", o.name, o.opt.Disk)
		}
		return nil
	}
	var err error
	if c.sel, err = ovfSelectDisk(s.ovf, o.opt.Disk); err != nil {
		return fmt.Errorf("%s: %w", o.name, err)
	}
	c.info.SelectedDisk = c.sel
	if c.sel >= 0 {
		c.vsize = c.info.Disks[c.sel].VirtualSize
	}
	// Every disk is held to the size limit; openWith checks the selected one.
	if lim := o.opt.MaxVirtualSize; lim > 0 {
		for i, d := range c.info.Disks {
			if i != c.sel && d.VirtualSize > lim {
				f.add(FindVirtualSize, "disk %q: virtual size %d bytes is above the limit of %d bytes", d.DiskID, d.VirtualSize, lim)
			}
		}
	}
	return nil
}

// addDisk records one DiskSection disk and what its member holds.
func (s *ovaOpen) addDisk(d OVFDisk) error {
	c, f := s.c, s.f
	sum := OVADisk{DiskID: d.ID, DeclaredFormat: d.Format, Capacity: d.Capacity, VirtualSize: d.Capacity}
	od := &ovaDisk{}
	file, ok := ovaFileOf(s.ovf, d)
	switch {
	case d.FileRef == "":
		od.empty = true
	case !ok:
		od.err = fmt.Errorf("disk %q: file %q is not in the descriptor's References", d.ID, d.FileRef)
	case ovfHrefProblem(file.Href) != "":
		od.err = fmt.Errorf("disk %q: file %q is not a name inside the archive: %w", d.ID, file.Href, ErrNotAllowed)
	case !ovaPlain(file):
		how := fmt.Sprintf("%s-compressed", file.Compression)
		if file.ChunkSize > 0 {
			how = fmt.Sprintf("split into chunks of %d bytes", file.ChunkSize)
		}
		od.err = unsupported(OVA, "disk %q: file %q is %s inside the archive, and glimpse reads disks in place", d.ID, file.Href, how)
		f.add(FindUnreadableSection, "disk %q: file %q is %s: glimpse cannot inspect it in place", d.ID, file.Href, how)
	default:
		m := s.byName[path.Clean(file.Href)]
		switch {
		case m == nil:
			od.err = fmt.Errorf("disk %q: file %q is not in the archive", d.ID, file.Href)
		case !m.regular:
			od.err = fmt.Errorf("disk %q: member %q is a %s, not a file", d.ID, m.Name, m.Type)
		default:
			if err := s.openDisk(m); err != nil {
				return err
			}
			od.member = m
			sum.Member = m.Name
			od.d, od.err = s.opened[m].d, s.opened[m].err
		}
	}
	if od.d != nil {
		sum.Format = od.d.format
		sum.VirtualSize = od.d.Size()
	}
	if od.err != nil {
		sum.Error = od.err.Error()
	}
	c.disks = append(c.disks, od)
	c.info.Disks = append(c.info.Disks, sum)
	return nil
}

// ovaDescriptor finds the .ovf member: the first member in a well-formed OVA, else the
// first .ovf anywhere (so that a misordered archive is still described, and reported).
func ovaDescriptor(members []*ovaMember, f *ovaFindings) *ovaMember {
	if len(members) == 0 {
		f.add(FindOVFStructure, "the archive holds no members, so no OVF descriptor")
		return nil
	}
	var ovfs []*ovaMember
	for _, m := range members {
		if isOVFName(m.Name) {
			ovfs = append(ovfs, m)
		}
	}
	if len(ovfs) == 0 {
		f.add(FindOVFStructure, "the archive holds no .ovf descriptor (its first member is %q)", members[0].Name)
		return nil
	}
	if ovfs[0] != members[0] {
		f.add(FindOVFStructure, "the first member is %q, not the .ovf descriptor: DSP0243 puts the descriptor first, and importers that read only the first member see something else", members[0].Name)
	}
	if len(ovfs) > 1 {
		f.add(FindOVFStructure, "the archive holds %d .ovf descriptors (%q, %q, …): importers may pick different ones", len(ovfs), ovfs[0].Name, ovfs[1].Name)
	}
	if !ovfs[0].regular {
		f.add(FindOVFStructure, "the descriptor %q is a %s, not a file", ovfs[0].Name, ovfs[0].Type)
		return nil
	}
	return ovfs[0]
}

// manifestLine is one parsed manifest line.
type manifestLine struct {
	name, algo string
	sum        []byte
}

// ovaParseManifest parses "SHA256(name)= hex" lines (also "SHA1", "SHA512", and the
// "SHA1 (name) = hex" spacing that openssl writes). It returns the lines it understood and
// a description of each it did not.
func ovaParseManifest(data []byte) ([]manifestLine, []string) {
	var out []manifestLine
	var bad []string
	seen := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		open := strings.IndexByte(line, '(')
		close := strings.LastIndexByte(line, ')')
		if open <= 0 || close < open {
			bad = append(bad, fmt.Sprintf("line %d is not ALGORITHM(name)= digest", i+1))
			continue
		}
		rest := strings.TrimSpace(line[close+1:])
		if !strings.HasPrefix(rest, "=") {
			bad = append(bad, fmt.Sprintf("line %d is not ALGORITHM(name)= digest", i+1))
			continue
		}
		algo := strings.ToLower(strings.TrimSpace(line[:open]))
		size := map[string]int{"sha1": 20, "sha256": 32, "sha512": 64}[algo]
		if size == 0 {
			bad = append(bad, fmt.Sprintf("line %d uses digest algorithm %q, which glimpse does not verify (SHA1, SHA256, SHA512)", i+1, strings.TrimSpace(line[:open])))
			continue
		}
		sum, err := hex.DecodeString(strings.TrimSpace(rest[1:]))
		if err != nil || len(sum) != size {
			bad = append(bad, fmt.Sprintf("line %d: the digest is not %d hexadecimal bytes", i+1, size))
			continue
		}
		name := line[open+1 : close]
		key := path.Clean(name)
		if seen[key] {
			bad = append(bad, fmt.Sprintf("line %d lists %q a second time", i+1, name))
			continue
		}
		seen[key] = true
		out = append(out, manifestLine{name: name, algo: algo, sum: sum})
	}
	return out, bad
}

// ovaFileMember finds the member that holds an OVF file: the member named by its href, or
// for a chunked file the first chunk (href.000000000).
func ovaFileMember(file OVFFile, byName map[string]*ovaMember) *ovaMember {
	name := path.Clean(file.Href)
	if file.ChunkSize > 0 {
		name += ".000000000"
	}
	return byName[name]
}

// ovaCheckReferences reports References that name no member of the archive, and members
// whose size is not what the descriptor says.
func ovaCheckReferences(ovf *OVFInfo, byName map[string]*ovaMember, f *ovaFindings) {
	for _, file := range ovf.Files {
		if file.Href == "" || ovfHrefProblem(file.Href) != "" {
			continue // the descriptor's own findings say so
		}
		m := ovaFileMember(file, byName)
		switch {
		case m == nil:
			f.add(FindOVFReference, "the descriptor names file %q (%s), which is not in the archive", file.Href, file.ID)
		case file.ChunkSize == 0 && file.Size >= 0 && m.regular && m.Size != file.Size:
			f.add(FindOVFReference, "file %q is %d bytes in the archive, the descriptor says %d", file.Href, m.Size, file.Size)
		}
	}
}

// ovaDiskErrorCode maps why a disk member could not be opened to a finding code; "" means
// the error is not about the member (a read error, or the stream's "not seen yet") and
// must be returned.
func ovaDiskErrorCode(err error) string {
	switch {
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrWrongFormat):
		return FindMalformed
	case errors.Is(err, ErrUnsupported), errors.Is(err, ErrNotAllowed):
		return FindUnreadableSection
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return FindPastEOF
	}
	return ""
}

// ovaOpenDisk opens a member as an image of its own, in place: its opener reads through a
// section of the archive (the size is known from the tar header, even while a stream is
// still arriving), and its digests are the archive's, shifted to the member's data.
// It never follows backing files: a disk in an archive cannot name a file on the host.
func ovaOpenDisk(o *opener, m *ovaMember) (*disk, error) {
	sr := io.NewSectionReader(o.r, m.Offset, m.Size)
	p, err := readProbe(sr, m.Size)
	if err != nil {
		return nil, err
	}
	if fs := probeAll(p); len(fs) > 0 && (fs[0] == OVA || fs[0] == OVF) {
		return nil, ferr(OVA, "disk member", "", m.Offset, nil, "%q is itself an %s, not a disk", m.Name, fs[0])
	}
	name := ovaChildName(o, m)
	opt := OpenOptions{Name: name, Logger: o.opt.Logger, depth: o.opt.depth + 1, chain: o.opt.chain}
	digest := o.digest
	if digest == nil {
		digest = func(off, n int64, algo string) ([]byte, error) { return digestAt(o.r, off, n, algo) }
	}
	child := &opener{r: sr, size: m.Size, sizeKnown: true, name: name, opt: opt, probe: p, log: o.log}
	child.digest = func(off, n int64, algo string) ([]byte, error) {
		if !within(off, n, m.Size) {
			return nil, fmt.Errorf("%s: digest of %d bytes at %d outside the member (%d bytes)", name, n, off, m.Size)
		}
		return digest(m.Offset+off, n, algo)
	}
	return openWith(child, nil)
}

// ovaChildName names a disk member as "archive.ova/member.vmdk".
func ovaChildName(o *opener, m *ovaMember) string {
	if o.name == "" {
		return m.Name
	}
	return o.name + "/" + m.Name
}

func (c *ovaCore) size() int64 { return c.vsize }

func (c *ovaCore) describe(info *Info) {
	oi := c.info
	info.FormatSpecific = &FormatSpecific{Type: OVA, Data: &oi}
	info.Children = c.children
}

func (c *ovaCore) findings() []Finding { return c.finds }

// lookup reads the selected disk in place: the child's runs, with the host offsets of data
// moved from the member to the archive.
func (c *ovaCore) lookup(off int64) (segment, error) {
	if c.sel < 0 {
		return segment{}, fmt.Errorf("ova: the archive holds no disk")
	}
	d := c.disks[c.sel]
	switch {
	case d.d != nil:
		s, err := d.d.lookup(off)
		if err != nil {
			return segment{}, err
		}
		if s.kind == KindData && s.depth == 0 && s.host >= 0 {
			s.host += d.member.Offset
		}
		return s, nil
	case d.empty:
		return segment{kind: KindHole, length: c.vsize - off, host: -1}, nil
	case d.err != nil:
		return segment{}, d.err
	}
	return segment{}, fmt.Errorf("ova: disk %q was not opened", c.info.Disks[c.sel].DiskID)
}

// check merges the checks of every disk member opened (problems prefixed with the member
// name, offsets moved to the archive) with the archive's own problems: manifest, tar structure, disks that could
// not be opened.
func (c *ovaCore) check(r *Report) {
	for _, p := range c.problems {
		r.Add(p.Kind, p.Structure, p.Offset, "%s", p.Message)
	}
	for _, ch := range c.opened {
		child, m := ch.d, ch.m
		cr := child.Check()
		r.CheckErrors += cr.CheckErrors
		r.Corruptions += cr.Corruptions
		r.Leaks += cr.Leaks
		for _, p := range cr.Problems {
			if len(r.Problems) >= 1000 {
				break
			}
			if p.Offset >= 0 {
				p.Offset += m.Offset
			}
			p.Message = m.Name + ": " + p.Message
			r.Problems = append(r.Problems, p)
		}
	}
}

func (c *ovaCore) close() error {
	var first error
	for _, ch := range c.opened {
		if err := ch.d.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
