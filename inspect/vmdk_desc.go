package inspect

import (
	"fmt"
	"strconv"
	"strings"
)

// The VMDK text descriptor: a few "key=value" header lines (version, CID, parentCID,
// createType, parentFileNameHint), one extent line per extent
// (ACCESS SECTORS TYPE ["FILE" [OFFSET]]), and "ddb.key = "value"" disk database lines. It
// is either a file of its own or embedded in the sectors of a hosted sparse extent, where
// it ends at the first NUL.
//
// Readers disagree about descriptors: qemu finds keys with strstr anywhere in the text
// (a comment can shadow the real line), scans extent lines with a sscanf that skips
// newlines, and ignores extents that are not RW. The parser here reads the descriptor as
// the format defines it, and a second pass computes what qemu would read, so that any
// difference becomes a FindDescriptor finding instead of two tools seeing two disks.

// Descriptor bounds. qemu reads at most 1 MiB - 1 of a descriptor; VMware's own
// descriptors are a few hundred bytes. glimpse parses at most maxDescriptorText bytes of
// text (64 KiB: hundreds of extents, far beyond any real descriptor, and small enough to
// hold in memory while streaming); a longer text is a finding and is not parsed further.
const (
	maxDescriptorText  = 64 << 10
	maxDescriptorBytes = 1 << 20 // qemu's cap; a larger embedded descriptor region is a finding
	// qemuDescWindow is how much of the descriptor qemu searches for CID, parentCID and
	// parentFileNameHint (DESC_SIZE, 20 sectors; the last byte is forced to NUL).
	qemuDescWindow = 20*512 - 1
	// maxDescriptorProblems bounds how many malformed-descriptor findings one image gets.
	maxDescriptorProblems = 8
)

// vmdkExtentLine is one parsed extent line.
type vmdkExtentLine struct {
	line    int    // 1-based line number
	access  string // RW, RDONLY, NOACCESS (upper case)
	sectors int64
	typ     string // FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE
	file    string
	hasFile bool
	offset  int64 // in sectors (FLAT)
	hasOff  bool
}

// namesFile reports whether the extent refers to a file (every type but ZERO).
func (e vmdkExtentLine) namesFile() bool { return e.hasFile }

// vmdkDescriptor is a parsed descriptor.
type vmdkDescriptor struct {
	text       string
	version    string
	cid        uint32
	hasCID     bool
	parentCID  uint32
	hasParent  bool
	createType string
	hasType    bool
	parentHint string
	hasHint    bool
	adapter    string
	hwVersion  string
	extents    []vmdkExtentLine
	keyPos     map[string]int // byte offset of each key in text
	problems   []string
	nProblems  int
}

func (d *vmdkDescriptor) problem(format string, args ...any) {
	d.nProblems++
	if len(d.problems) < maxDescriptorProblems {
		d.problems = append(d.problems, fmt.Sprintf(format, args...))
	}
}

var vmdkExtentTypes = map[string]bool{
	"FLAT": true, "SPARSE": true, "ZERO": true, "VMFS": true, "VMFSSPARSE": true,
	"VMFSRDM": true, "VMFSRAW": true, "SESPARSE": true,
}

// parseVMDKDescriptor parses descriptor text (already cut at its NUL and bounded).
func parseVMDKDescriptor(text string) *vmdkDescriptor {
	d := &vmdkDescriptor{text: text, keyPos: map[string]int{}}
	nonASCII := 0
	for lineNo, start := 1, 0; start < len(text); lineNo++ {
		end := strings.IndexByte(text[start:], '\n')
		if end < 0 {
			end = len(text)
		} else {
			end += start
		}
		raw := text[start:end]
		lineStart := start
		start = end + 1
		raw = strings.TrimSuffix(raw, "\r")
		for i := 0; i < len(raw); i++ {
			if c := raw[i]; (c < 0x20 && c != '\t') || c >= 0x7f {
				nonASCII++
				if nonASCII == 1 {
					d.problem("line %d holds a byte (0x%02x) that is not printable ASCII", lineNo, c)
				}
				break
			}
		}
		lead := len(raw) - len(strings.TrimLeft(raw, " \t"))
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		first := line
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			first = line[:i]
		}
		switch strings.ToUpper(first) {
		case "RW", "RDONLY", "NOACCESS":
			d.parseExtent(lineNo, line)
			continue
		}
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			d.problem("line %d is neither a setting, an extent nor a comment: %q", lineNo, clip(line, 60))
			continue
		}
		key := strings.TrimSpace(line[:eq])
		val := strings.TrimSpace(line[eq+1:])
		if !vmdkValidKey(key) {
			d.problem("line %d: %q is not a setting name", lineNo, clip(key, 60))
			continue
		}
		if strings.HasPrefix(val, `"`) {
			if len(val) < 2 || !strings.HasSuffix(val, `"`) || strings.Contains(val[1:len(val)-1], `"`) {
				d.problem("line %d: value of %s is not one quoted string", lineNo, key)
				continue
			}
			val = val[1 : len(val)-1]
		} else if strings.ContainsAny(val, " \t\"") {
			d.problem("line %d: value of %s holds spaces or quotes outside a quoted string", lineNo, key)
			continue
		}
		if _, dup := d.keyPos[key]; dup {
			d.problem("line %d: %s is set twice (readers disagree on which one counts)", lineNo, key)
			continue
		}
		d.keyPos[key] = lineStart + lead
		switch key {
		case "version":
			d.version = val
			if val != "1" && val != "2" && val != "3" {
				d.problem("line %d: version %q (1, 2 or 3 expected)", lineNo, clip(val, 20))
			}
		case "CID", "parentCID":
			v, err := strconv.ParseUint(val, 16, 32)
			if err != nil || len(val) > 8 {
				d.problem("line %d: %s %q is not a 32-bit hexadecimal number", lineNo, key, clip(val, 20))
				continue
			}
			if key == "CID" {
				d.cid, d.hasCID = uint32(v), true
			} else {
				d.parentCID, d.hasParent = uint32(v), true
			}
		case "createType":
			d.createType, d.hasType = val, true
		case "parentFileNameHint":
			d.parentHint, d.hasHint = val, true
		case "ddb.adapterType":
			d.adapter = val
		case "ddb.virtualHWVersion":
			d.hwVersion = val
		}
	}
	if nonASCII > 1 {
		d.problem("%d lines hold bytes that are not printable ASCII", nonASCII)
	}
	if !d.hasType {
		d.problem("no createType")
	}
	if !d.hasCID {
		d.problem("no CID")
	}
	if len(d.extents) == 0 {
		d.problem("no extent lines")
	}
	return d
}

func vmdkValidKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// parseExtent parses ACCESS SECTORS TYPE ["FILE" [OFFSET]].
func (d *vmdkDescriptor) parseExtent(lineNo int, line string) {
	e := vmdkExtentLine{line: lineNo}
	rest := line
	next := func() string {
		rest = strings.TrimLeft(rest, " \t")
		i := strings.IndexAny(rest, " \t")
		if i < 0 {
			i = len(rest)
		}
		tok := rest[:i]
		rest = rest[i:]
		return tok
	}
	e.access = next()
	if u := strings.ToUpper(e.access); u != e.access {
		d.problem("line %d: extent access %q is not upper case (qemu ignores such extents)", lineNo, e.access)
		e.access = u
	}
	sec := next()
	n, ok := vmdkDecimal(sec)
	if !ok || n <= 0 {
		d.problem("line %d: extent size %q is not a positive number of sectors", lineNo, clip(sec, 24))
		return
	}
	e.sectors = n
	e.typ = next()
	if u := strings.ToUpper(e.typ); u != e.typ {
		d.problem("line %d: extent type %q is not upper case", lineNo, clip(e.typ, 24))
		e.typ = u
	}
	if !vmdkExtentTypes[e.typ] {
		d.problem("line %d: unknown extent type %q", lineNo, clip(e.typ, 24))
		return
	}
	rest = strings.TrimLeft(rest, " \t")
	if strings.HasPrefix(rest, `"`) {
		end := strings.IndexByte(rest[1:], '"')
		if end < 0 {
			d.problem("line %d: extent file name has no closing quote", lineNo)
			return
		}
		e.file, e.hasFile = rest[1:1+end], true
		rest = rest[end+2:]
		if e.file == "" {
			d.problem("line %d: empty extent file name", lineNo)
		}
		if tok := next(); tok != "" {
			off, ok := vmdkDecimal(tok)
			if !ok {
				d.problem("line %d: extent offset %q is not a number of sectors", lineNo, clip(tok, 24))
				return
			}
			e.offset, e.hasOff = off, true
		}
	}
	if tok := next(); tok != "" {
		d.problem("line %d: unexpected %q after the extent", lineNo, clip(tok, 24))
	}
	switch {
	case e.typ == "ZERO" && e.hasFile:
		d.problem("line %d: a ZERO extent names a file", lineNo)
	case e.typ != "ZERO" && !e.hasFile:
		d.problem("line %d: a %s extent without a file name", lineNo, e.typ)
		return
	case e.typ == "FLAT" && !e.hasOff:
		d.problem("line %d: a FLAT extent without an offset", lineNo)
	case e.hasOff && e.typ != "FLAT":
		d.problem("line %d: a %s extent with an offset", lineNo, e.typ)
	}
	d.extents = append(d.extents, e)
}

// vmdkDecimal parses a non-negative decimal int64 with digits only.
func vmdkDecimal(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// ---- what qemu reads --------------------------------------------------------------

// qemuDescValue emulates vmdk_parse_description: the first occurrence of name anywhere in
// the text, two characters skipped (`="`), the value up to the next '"'. ok is false
// where qemu fails ("invalid VMDK image descriptor").
func qemuDescValue(text, name string, bufSize int) (string, bool) {
	i := strings.Index(text, name)
	if i < 0 {
		return "", false
	}
	p := i + len(name) + 2
	if p >= len(text) {
		return "", false
	}
	end := strings.IndexByte(text[p:], '"')
	if end < 0 || end+1 > bufSize {
		return "", false
	}
	return text[p : p+end], true
}

// qemuCID emulates vmdk_read_cid: strstr for "CID" or "parentCID" in the first
// qemuDescWindow bytes, one character skipped after the name, then sscanf("%x").
func qemuCID(window, name string) (uint32, bool) {
	i := strings.Index(window, name)
	if i < 0 {
		return 0, false
	}
	p := i + len(name) + 1
	if p > len(window) {
		return 0, false
	}
	s := window[p:]
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && isHex(s[2]) {
		s = s[2:]
	}
	var v uint64
	n := 0
	for n < len(s) && isHex(s[n]) {
		if v < 1<<60 {
			v = v<<4 | uint64(hexVal(s[n]))
		} else {
			v = 1<<64 - 1
		}
		n++
	}
	if n == 0 {
		return 0, false
	}
	if neg {
		v = -v
	}
	return uint32(v), true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// qemuParentHint emulates vmdk_parent_open: strstr for "parentFileNameHint" in the first
// qemuDescWindow bytes, two characters skipped, the name up to the next '"'. found says
// whether qemu sees a hint at all; ok is false where qemu fails to open the image.
func qemuParentHint(window string) (hint string, found, ok bool) {
	const key = "parentFileNameHint"
	i := strings.Index(window, key)
	if i < 0 {
		return "", false, true
	}
	p := i + len(key) + 2
	if p > len(window) {
		return "", true, false
	}
	end := strings.IndexByte(window[p:], '"')
	if end < 0 || end > 4095 {
		return "", true, false
	}
	return window[p : p+end], true, true
}

// qemuExtent is one extent as qemu's vmdk_parse_extents takes it.
type qemuExtent struct {
	sectors int64
	typ     string
	file    string
	offset  int64
}

// qemuExtents emulates vmdk_parse_extents: at each line start,
// sscanf(p, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64, …), whose whitespace
// directives skip newlines too; only RW extents of the types qemu knows are kept. ok is
// false where qemu rejects an extent line and fails to open the image. Because every line
// start scans on across the lines that follow, a text of blank lines costs quadratic
// time: the scan stops after qemuScanBudget characters per byte of text, and known is
// then false.
func qemuExtents(text string) (out []qemuExtent, ok, known bool) {
	budget := qemuScanBudget * (len(text) + 1)
	for p := 0; p < len(text); {
		s := cScanner{s: text, i: p, budget: &budget}
		access, m1 := s.str(10)
		var sectors, offset int64
		var typ, file string
		matches := 0
		if m1 {
			matches = 1
			if sectors, m1 = s.int(); m1 {
				matches = 2
				if typ, m1 = s.str(10); m1 {
					matches = 3
					s.skipSpace()
					if s.lit('"') {
						if file, m1 = s.set(511); m1 {
							matches = 4
							if s.lit('"') {
								if offset, m1 = s.int(); m1 {
									matches = 5
								}
							}
						}
					}
				}
			}
		}
		if budget < 0 {
			return nil, true, false
		}
		if nl := strings.IndexByte(text[p:], '\n'); nl >= 0 {
			p += nl + 1
		} else {
			p = len(text)
		}
		if matches < 4 || access != "RW" {
			continue
		}
		switch {
		case typ == "FLAT":
			if matches != 5 || offset < 0 {
				return out, false, true
			}
		case typ == "VMFS":
			if matches != 4 {
				return out, false, true
			}
			offset = 0
		case matches != 4:
			return out, false, true
		}
		if sectors <= 0 {
			continue
		}
		switch typ {
		case "FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE":
			out = append(out, qemuExtent{sectors: sectors, typ: typ, file: file, offset: offset})
		}
	}
	return out, true, true
}

// qemuScanBudget bounds the emulated scan: characters examined per byte of text.
const qemuScanBudget = 16

// cScanner emulates the few scanf directives qemu uses.
type cScanner struct {
	s      string
	i      int
	budget *int // characters left to examine; below zero, every directive fails
}

// step consumes one character of the budget.
func (c *cScanner) step() bool {
	*c.budget--
	return *c.budget >= 0
}

func cSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func (c *cScanner) skipSpace() {
	for c.i < len(c.s) && cSpace(c.s[c.i]) && c.step() {
		c.i++
	}
}

// str is " %Ns": skip white space, read 1..n non-space characters.
func (c *cScanner) str(n int) (string, bool) {
	c.skipSpace()
	start := c.i
	for c.i < len(c.s) && c.i-start < n && !cSpace(c.s[c.i]) && c.step() {
		c.i++
	}
	return c.s[start:c.i], c.i > start && *c.budget >= 0
}

// int is " %lld": skip white space, optional sign, decimal digits (saturating).
func (c *cScanner) int() (int64, bool) {
	c.skipSpace()
	neg := false
	if c.i < len(c.s) && (c.s[c.i] == '+' || c.s[c.i] == '-') {
		neg = c.s[c.i] == '-'
		c.i++
	}
	start := c.i
	var v int64
	for c.i < len(c.s) && c.s[c.i] >= '0' && c.s[c.i] <= '9' && c.step() {
		d := int64(c.s[c.i] - '0')
		if v > (1<<63-1-d)/10 {
			v = 1<<63 - 1
		} else {
			v = v*10 + d
		}
		c.i++
	}
	if c.i == start || *c.budget < 0 {
		return 0, false
	}
	if neg {
		v = -v
	}
	return v, true
}

func (c *cScanner) lit(b byte) bool {
	if c.i < len(c.s) && c.s[c.i] == b {
		c.i++
		return true
	}
	return false
}

// set is "%N[^\n\r\"]".
func (c *cScanner) set(n int) (string, bool) {
	start := c.i
	for c.i < len(c.s) && c.i-start < n && c.step() {
		if b := c.s[c.i]; b == '\n' || b == '\r' || b == '"' {
			break
		}
		c.i++
	}
	return c.s[start:c.i], c.i > start && *c.budget >= 0
}
