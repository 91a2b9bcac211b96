package inspect

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// OVF is the XML descriptor of a virtual appliance (DMTF DSP0243): which files make up the
// package (References), which virtual disks they hold (DiskSection), the networks, and the
// virtual systems with their hardware. glimpse reads the OVF 0.9 envelope (VMware's
// namespace, sections typed with xsi:type), the 1.x envelope and the 2.x envelope.
//
// The descriptor is parsed as a stream of XML tokens: nothing is kept but the fields below,
// so memory stays bounded by the caps whatever the document holds.

// Limits of the OVF parser, each with its reason.
const (
	// maxOVFSize caps the descriptor. Real descriptors are a few KiB; a VMware export with a
	// large ProductSection or EULA reaches about 100 KiB. 512 KiB leaves room for those while
	// the stream inspector, which must stay under 1 MiB in all, keeps its other buffers.
	maxOVFSize = 512 << 10
	// maxOVFElements caps the XML elements read. A descriptor with a dozen virtual systems
	// has a few thousand; the cap stops a document of empty elements from costing time.
	maxOVFElements = 32768
	// maxOVFDepth caps element nesting. DSP0243 nests about eight deep (Envelope, collection,
	// system, section, item, field); deeper documents are not OVF.
	maxOVFDepth = 64
	// maxOVFText caps the text kept from one element (a name, a description, a HostResource).
	maxOVFText = 1024
	// maxOVFList caps each list kept (files, disks, networks, configurations, systems, and
	// hardware items per system). A real appliance has well under a hundred of each.
	maxOVFList = 256
	// maxOVFFindings caps the findings one descriptor can produce, so that a hostile document
	// cannot make the report unbounded. The last finding says how many were left out.
	maxOVFFindings = 32
)

// The envelope namespaces glimpse accepts.
const (
	ovfNS09 = "http://www.vmware.com/schema/ovf/1/envelope" // OVF 0.9, before DMTF
	ovfNS1  = "http://schemas.dmtf.org/ovf/envelope/1"      // OVF 1.0, 1.1
	ovfNS2  = "http://schemas.dmtf.org/ovf/envelope/2"      // OVF 2.0, 2.1
	xsiNS   = "http://www.w3.org/2001/XMLSchema-instance"
)

func ovfNamespace(ns string) bool { return ns == ovfNS09 || ns == ovfNS1 || ns == ovfNS2 }

// OVFInfo is the format-specific detail of an OVF descriptor, alone or inside an OVA.
type OVFInfo struct {
	// Version is the envelope's ovf:version when it has one, else what its namespace says:
	// "0.9", "1.x" or "2.x".
	Version   string `json:"version"`
	Namespace string `json:"namespace"`
	// Files are the References: every file of the package.
	Files []OVFFile `json:"files,omitempty"`
	// Disks are the DiskSection's virtual disks.
	Disks []OVFDisk `json:"disks,omitempty"`
	// Networks are the NetworkSection's logical network names.
	Networks []string `json:"networks,omitempty"`
	// Configurations are the DeploymentOptionSection's profiles; hardware is described for
	// DefaultConfiguration.
	Configurations       []string `json:"configurations,omitempty"`
	DefaultConfiguration string   `json:"default-configuration,omitempty"`
	// VirtualSystems are every VirtualSystem, including those inside collections.
	VirtualSystems []OVFVirtualSystem `json:"virtual-systems,omitempty"`
	// Collections are the ids of the VirtualSystemCollections.
	Collections []string `json:"collections,omitempty"`
}

// OVFFile is one References/File.
type OVFFile struct {
	ID   string `json:"id"`
	Href string `json:"href"`
	// Size is the declared size in bytes (of the compressed file when compressed); -1 when
	// the descriptor does not say.
	Size int64 `json:"size"`
	// Compression is "gzip" (or another method) when the file is stored compressed.
	Compression string `json:"compression,omitempty"`
	// ChunkSize, when set, means the file is split into chunks named href.000000000,
	// href.000000001, … of this many bytes each.
	ChunkSize int64 `json:"chunk-size,omitempty"`
}

// OVFDisk is one DiskSection/Disk.
type OVFDisk struct {
	ID      string `json:"id"`
	FileRef string `json:"file-ref,omitempty"`
	// Capacity is the virtual size in bytes; 0 when the descriptor gives a property
	// reference ("${disk.size}") or nothing usable.
	Capacity int64 `json:"capacity"`
	// CapacityText and CapacityUnits are the attributes as written.
	CapacityText  string `json:"capacity-text,omitempty"`
	CapacityUnits string `json:"capacity-allocation-units,omitempty"`
	PopulatedSize int64  `json:"populated-size,omitempty"`
	// Format is the format URI ("http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized").
	Format    string `json:"format,omitempty"`
	ParentRef string `json:"parent-ref,omitempty"`
}

// OVFVirtualSystem is one VirtualSystem, its guest OS and its hardware for the default
// configuration.
type OVFVirtualSystem struct {
	ID         string              `json:"id"`
	Name       string              `json:"name,omitempty"`
	Collection string              `json:"collection,omitempty"`
	OS         *OVFOperatingSystem `json:"operating-system,omitempty"`
	// SystemType is the VirtualSystemType ("vmx-13", "virtualbox-2.2").
	SystemType string     `json:"system-type,omitempty"`
	CPUs       int64      `json:"cpus,omitempty"`
	Memory     int64      `json:"memory,omitempty"` // bytes
	NICs       int        `json:"nics,omitempty"`
	Drives     []OVFDrive `json:"drives,omitempty"`
}

// OVFOperatingSystem is a VirtualSystem's OperatingSystemSection.
type OVFOperatingSystem struct {
	ID          int64  `json:"id"` // the CIM operating system type
	Version     string `json:"version,omitempty"`
	Description string `json:"description,omitempty"`
	OSType      string `json:"os-type,omitempty"` // vmw:osType
}

// OVFDrive is a disk, CD, DVD or floppy drive of a VirtualHardwareSection.
type OVFDrive struct {
	InstanceID string `json:"instance-id"`
	Kind       string `json:"kind"` // "disk", "cdrom", "dvd", "floppy"
	// Disk is the diskId of an "ovf:/disk/ID" HostResource, File the file id of an
	// "ovf:/file/ID" one.
	Disk string `json:"disk,omitempty"`
	File string `json:"file,omitempty"`
	// Controller is the controller's kind ("ide", "scsi", "sata", …) and ControllerType its
	// ResourceSubType ("lsilogic", "PIIX4", "AHCI").
	Controller      string `json:"controller,omitempty"`
	ControllerType  string `json:"controller-type,omitempty"`
	AddressOnParent string `json:"address-on-parent,omitempty"`
}

// ovfFindings collects findings up to maxOVFFindings; ova.go uses it too.
type ovfFindings struct {
	list    []Finding
	dropped int
	prefix  string // put before every message (the member name inside an OVA)
	max     int    // 0: maxOVFFindings
}

func (f *ovfFindings) add(code, format string, args ...any) {
	if len(f.list) >= f.limit() {
		f.dropped++
		return
	}
	f.list = append(f.list, Finding{code, f.prefix + fmt.Sprintf(format, args...)})
}

func (f *ovfFindings) limit() int {
	if f.max > 0 {
		return f.max
	}
	return maxOVFFindings
}

func (f *ovfFindings) done() []Finding {
	out := f.list
	if f.dropped > 0 {
		out = append(out, Finding{FindOVFStructure, fmt.Sprintf("%s%d more findings were left out", f.prefix, f.dropped)})
	}
	return out
}

// ovfItem is one hardware item as written, before configurations are resolved.
type ovfItem struct {
	config                                   string // ovf:configuration, space-separated profile ids
	instanceID, resourceType, subType        string
	quantity, units, hostResource, parent    string
	addressOnParent, connection, elementName string
}

// ovfSystem is a VirtualSystem or VirtualSystemCollection being parsed.
type ovfSystem struct {
	collection bool
	index      int // into info.VirtualSystems for a system
	id         string
	items      []ovfItem
	dropped    bool // items were left out (maxOVFList)
}

// ovfFrame is one open element.
type ovfFrame struct {
	name string // effective local name: xsi:type for 0.9 sections; "" for foreign elements
	raw  string // local name as written, whatever its namespace
	// text, when not nil, receives the element's character data.
	text *string
	buf  []byte
}

// ovfParser walks the descriptor's tokens once.
type ovfParser struct {
	dec     *xml.Decoder
	ns      string
	info    OVFInfo
	f       *ovfFindings
	stack   []ovfFrame
	systems []*ovfSystem // open systems and collections, innermost last
	all     []*ovfSystem // every system, in document order
	item    *ovfItem
	os      *OVFOperatingSystem
	// configuration ids with ovf:default="true"
	defaultConfig string
	truncated     map[string]bool // lists that hit maxOVFList
}

// ovfSource counts the bytes read and remembers the first read error that is not io.EOF,
// so that a read failure (or the stream inspector's "not seen yet") is returned as an
// error, never mistaken for malformed XML.
type ovfSource struct {
	r     io.Reader
	n     int64
	limit int64
	err   error
}

func (s *ovfSource) Read(p []byte) (int, error) {
	if s.n >= s.limit {
		return 0, io.EOF
	}
	if int64(len(p)) > s.limit-s.n {
		p = p[:s.limit-s.n]
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) && s.err == nil {
		s.err = err
	}
	return n, err
}

// errOVFTooLarge reports a descriptor above maxOVFSize.
var errOVFTooLarge = errors.New("OVF descriptor too large")

// parseOVFAt parses the descriptor in r at off, n bytes long (n < 0: up to the end, for a
// stream of unknown size). Problems with the document are findings, each message prefixed
// with prefix; the error is only a read error, passed through wrapped, or errOVFTooLarge.
func parseOVFAt(r io.ReaderAt, off, n int64, prefix string) (*OVFInfo, []Finding, error) {
	if n > maxOVFSize {
		return nil, nil, errOVFTooLarge
	}
	limit := int64(maxOVFSize + 1)
	if n >= 0 {
		limit = n
	}
	src := &ovfSource{r: io.NewSectionReader(r, off, limit), limit: limit}
	f := &ovfFindings{prefix: prefix}
	info := parseOVF(bufio.NewReaderSize(src, 16<<10), f)
	if src.err != nil {
		return nil, nil, fmt.Errorf("reading the OVF descriptor: %w", src.err)
	}
	if src.n > maxOVFSize {
		return nil, nil, errOVFTooLarge
	}
	return info, f.done(), nil
}

// ovfCharset decodes the two legacy encodings a descriptor may declare besides UTF-8.
func ovfCharset(label string, in io.Reader) (io.Reader, error) {
	switch strings.ToLower(label) {
	case "us-ascii", "ascii":
		return in, nil
	case "iso-8859-1", "latin1", "latin-1", "iso_8859-1":
		return &latin1Reader{r: bufio.NewReader(in)}, nil
	}
	return nil, fmt.Errorf("unsupported encoding %q", label)
}

type latin1Reader struct {
	r   *bufio.Reader
	buf []byte
}

func (l *latin1Reader) Read(p []byte) (int, error) {
	for len(l.buf) == 0 {
		b, err := l.r.ReadByte()
		if err != nil {
			return 0, err
		}
		l.buf = utf8.AppendRune(l.buf[:0], rune(b))
	}
	n := copy(p, l.buf)
	l.buf = l.buf[n:]
	return n, nil
}

// parseOVF parses a descriptor. It returns what it understood, even from a broken
// document; what is wrong goes to f.
func parseOVF(r io.Reader, f *ovfFindings) *OVFInfo {
	p := &ovfParser{f: f, truncated: map[string]bool{}}
	p.dec = xml.NewDecoder(r)
	p.dec.CharsetReader = ovfCharset
	p.run()
	p.finish()
	return &p.info
}

func (p *ovfParser) run() bool {
	elements := 0
	for {
		tok, err := p.dec.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if p.ns == "" {
					p.f.add(FindOVFStructure, "the document has no root element")
				} else {
					p.f.add(FindOVFStructure, "the document ends inside <%s>", p.stack[len(p.stack)-1].raw)
				}
			} else {
				p.f.add(FindOVFStructure, "malformed XML: %v", err)
			}
			return false
		}
		switch t := tok.(type) {
		case xml.StartElement:
			elements++
			if elements > maxOVFElements {
				p.f.add(FindTooLarge, "more than %d XML elements: the rest of the descriptor was not read", maxOVFElements)
				return false
			}
			if len(p.stack) >= maxOVFDepth {
				p.f.add(FindOVFStructure, "elements nested more than %d deep", maxOVFDepth)
				return false
			}
			if len(p.stack) == 0 {
				if t.Name.Local != "Envelope" || !ovfNamespace(t.Name.Space) {
					p.f.add(FindOVFStructure, "the root element is <%s> in namespace %q, not an OVF Envelope", t.Name.Local, t.Name.Space)
					return false
				}
				p.ns = t.Name.Space
			}
			p.start(t)
		case xml.EndElement:
			if len(p.stack) == 0 {
				return false // the decoder reports unmatched end tags; this cannot happen
			}
			p.end()
			if len(p.stack) == 0 {
				return true // the root is closed: anything after it is not the descriptor's
			}
		case xml.CharData:
			if len(p.stack) > 0 {
				fr := &p.stack[len(p.stack)-1]
				if fr.text != nil && len(fr.buf) < maxOVFText {
					fr.buf = append(fr.buf, t[:min(len(t), maxOVFText-len(fr.buf))]...)
				}
			}
		}
	}
}

// attr returns an attribute by local name, preferring the envelope's namespace, then no
// namespace, then any.
func (p *ovfParser) attr(se xml.StartElement, local string) string {
	best, rank := "", 0
	for _, a := range se.Attr {
		if a.Name.Local != local {
			continue
		}
		r := 1
		switch a.Name.Space {
		case p.ns:
			r = 3
		case "":
			r = 2
		}
		if r > rank {
			best, rank = a.Value, r
		}
	}
	return clipText(best)
}

func clipText(s string) string {
	if len(s) > maxOVFText {
		return s[:maxOVFText]
	}
	return s
}

// parent is the effective name of the element that encloses the one being opened.
func (p *ovfParser) parent() string {
	if len(p.stack) == 0 {
		return ""
	}
	return p.stack[len(p.stack)-1].name
}

func (p *ovfParser) grandparent() string {
	if len(p.stack) < 2 {
		return ""
	}
	return p.stack[len(p.stack)-2].name
}

// full reports, once per list, that a list reached maxOVFList.
func (p *ovfParser) full(list string, n int) bool {
	if n < maxOVFList {
		return false
	}
	if !p.truncated[list] {
		p.truncated[list] = true
		p.f.add(FindTooLarge, "more than %d %s: the rest were not read", maxOVFList, list)
	}
	return true
}

func (p *ovfParser) start(se xml.StartElement) {
	fr := ovfFrame{raw: se.Name.Local}
	if se.Name.Space == p.ns {
		fr.name = se.Name.Local
		// OVF 0.9 writes <Section xsi:type="ovf:DiskSection_Type"> and <Content
		// xsi:type="ovf:VirtualSystem_Type">; later versions name the element itself.
		if fr.name == "Section" || fr.name == "Content" {
			for _, a := range se.Attr {
				if a.Name.Local == "type" && a.Name.Space == xsiNS {
					v := a.Value
					if i := strings.LastIndexByte(v, ':'); i >= 0 {
						v = v[i+1:]
					}
					fr.name = strings.TrimSuffix(v, "_Type")
				}
			}
		}
	}
	parent := p.parent()
	var sys *ovfSystem
	if len(p.systems) > 0 {
		sys = p.systems[len(p.systems)-1]
	}
	switch {
	case len(p.stack) == 0:
		p.info.Namespace = p.ns
		p.info.Version = p.attr(se, "version")
		if p.info.Version == "" {
			switch p.ns {
			case ovfNS09:
				p.info.Version = "0.9"
			case ovfNS1:
				p.info.Version = "1.x"
			case ovfNS2:
				p.info.Version = "2.x"
			}
		}
	case fr.name == "File" && parent == "References":
		if p.full("files", len(p.info.Files)) {
			break
		}
		file := OVFFile{ID: p.attr(se, "id"), Href: p.attr(se, "href"), Size: -1, Compression: p.attr(se, "compression")}
		if s := p.attr(se, "size"); s != "" {
			v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
			if err != nil || v < 0 {
				p.f.add(FindOVFStructure, "file %q: size %q is not a byte count", file.ID, s)
			} else {
				file.Size = v
			}
		}
		if s := p.attr(se, "chunkSize"); s != "" {
			v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
			if err != nil || v <= 0 {
				p.f.add(FindOVFStructure, "file %q: chunkSize %q is not a positive byte count", file.ID, s)
			} else {
				file.ChunkSize = v
			}
		}
		p.info.Files = append(p.info.Files, file)
	case fr.name == "Disk" && parent == "DiskSection":
		if p.full("disks", len(p.info.Disks)) {
			break
		}
		d := OVFDisk{ID: p.attr(se, "diskId"), FileRef: p.attr(se, "fileRef"), CapacityText: p.attr(se, "capacity"),
			CapacityUnits: p.attr(se, "capacityAllocationUnits"), Format: p.attr(se, "format"), ParentRef: p.attr(se, "parentRef")}
		d.Capacity = p.capacity(d)
		if s := p.attr(se, "populatedSize"); s != "" {
			v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
			if err != nil || v < 0 {
				p.f.add(FindOVFStructure, "disk %q: populatedSize %q is not a byte count", d.ID, s)
			} else {
				d.PopulatedSize = v
			}
		}
		p.info.Disks = append(p.info.Disks, d)
	case fr.name == "Network" && parent == "NetworkSection":
		if !p.full("networks", len(p.info.Networks)) {
			p.info.Networks = append(p.info.Networks, p.attr(se, "name"))
		}
	case fr.name == "Configuration" && parent == "DeploymentOptionSection":
		if p.full("configurations", len(p.info.Configurations)) {
			break
		}
		id := p.attr(se, "id")
		p.info.Configurations = append(p.info.Configurations, id)
		if b, _ := strconv.ParseBool(p.attr(se, "default")); b && p.defaultConfig == "" {
			p.defaultConfig = id
		}
	case fr.name == "VirtualSystem" || fr.name == "VirtualSystemCollection":
		s := &ovfSystem{collection: fr.name == "VirtualSystemCollection", id: p.attr(se, "id"), index: -1}
		var coll string
		for i := len(p.systems) - 1; i >= 0; i-- {
			if p.systems[i].collection {
				coll = p.systems[i].id
				break
			}
		}
		if s.collection {
			if !p.full("virtual system collections", len(p.info.Collections)) {
				p.info.Collections = append(p.info.Collections, s.id)
			}
		} else if !p.full("virtual systems", len(p.info.VirtualSystems)) {
			s.index = len(p.info.VirtualSystems)
			p.info.VirtualSystems = append(p.info.VirtualSystems, OVFVirtualSystem{ID: s.id, Collection: coll})
			p.all = append(p.all, s)
		}
		p.systems = append(p.systems, s)
	case sys != nil && sys.index >= 0 && fr.name == "Name" && parent == "VirtualSystem":
		fr.text = &p.info.VirtualSystems[sys.index].Name
	case sys != nil && sys.index >= 0 && fr.name == "OperatingSystemSection" && parent == "VirtualSystem":
		vs := &p.info.VirtualSystems[sys.index]
		if vs.OS == nil {
			vs.OS = &OVFOperatingSystem{Version: p.attr(se, "version"), OSType: p.attr(se, "osType")}
			if v, err := strconv.ParseInt(strings.TrimSpace(p.attr(se, "id")), 10, 64); err == nil {
				vs.OS.ID = v
			}
			p.os = vs.OS
		}
	case p.os != nil && fr.name == "Description" && parent == "OperatingSystemSection":
		fr.text = &p.os.Description
	case sys != nil && sys.index >= 0 && fr.raw == "VirtualSystemType" && parent == "System" && p.grandparent() == "VirtualHardwareSection":
		fr.text = &p.info.VirtualSystems[sys.index].SystemType
	case sys != nil && sys.index >= 0 && parent == "VirtualHardwareSection" &&
		(fr.name == "Item" || fr.name == "StorageItem" || fr.name == "EthernetPortItem"):
		if len(sys.items) >= maxOVFList {
			if !sys.dropped {
				sys.dropped = true
				p.f.add(FindTooLarge, "virtual system %q: more than %d hardware items: the rest were not read", sys.id, maxOVFList)
			}
			break
		}
		sys.items = append(sys.items, ovfItem{config: p.attr(se, "configuration")})
		p.item = &sys.items[len(sys.items)-1]
	case p.item != nil && (parent == "Item" || parent == "StorageItem" || parent == "EthernetPortItem"):
		// The fields are in the rasd, sasd or epasd namespaces: matched by local name.
		it := p.item
		switch fr.raw {
		case "InstanceID", "InstanceId":
			fr.text = &it.instanceID
		case "ResourceType":
			fr.text = &it.resourceType
		case "ResourceSubType":
			fr.text = &it.subType
		case "VirtualQuantity":
			fr.text = &it.quantity
		case "AllocationUnits":
			fr.text = &it.units
		case "HostResource":
			fr.text = &it.hostResource
		case "Parent":
			fr.text = &it.parent
		case "AddressOnParent":
			fr.text = &it.addressOnParent
		case "Connection":
			fr.text = &it.connection
		case "ElementName", "Caption":
			if it.elementName == "" {
				fr.text = &it.elementName
			}
		}
	}
	p.stack = append(p.stack, fr)
}

func (p *ovfParser) end() {
	fr := p.stack[len(p.stack)-1]
	p.stack = p.stack[:len(p.stack)-1]
	if fr.text != nil {
		*fr.text = strings.TrimSpace(string(fr.buf))
	}
	switch fr.name {
	case "VirtualSystem", "VirtualSystemCollection":
		if len(p.systems) > 0 {
			p.systems = p.systems[:len(p.systems)-1]
		}
	case "OperatingSystemSection":
		p.os = nil
	case "Item", "StorageItem", "EthernetPortItem":
		p.item = nil
	}
}

// capacity converts a Disk's capacity to bytes. A property reference ("${disk.size}") is
// resolved only at deployment: the capacity is then unknown (0), which is not a finding.
func (p *ovfParser) capacity(d OVFDisk) int64 {
	text := strings.TrimSpace(d.CapacityText)
	if text == "" {
		p.f.add(FindOVFStructure, "disk %q has no capacity", d.ID)
		return 0
	}
	if strings.HasPrefix(text, "${") {
		return 0
	}
	v, err := strconv.ParseInt(text, 10, 64)
	if err != nil || v < 0 {
		p.f.add(FindOVFStructure, "disk %q: capacity %q is not a number", d.ID, d.CapacityText)
		return 0
	}
	mult, ok := ovfUnits(d.CapacityUnits, 1)
	if !ok {
		p.f.add(FindOVFStructure, "disk %q: capacityAllocationUnits %q is not a byte unit", d.ID, d.CapacityUnits)
		return 0
	}
	bytes, ok := mul64(v, mult)
	if !ok {
		p.f.add(FindOVFStructure, "disk %q: capacity %s × %s overflows 64 bits", d.ID, d.CapacityText, d.CapacityUnits)
		return 0
	}
	return bytes
}

// ovfUnits parses a unit of bytes: a DSP0004 programmatic unit ("byte", "byte * 2^30",
// "byte*10^9", "byte * 1024") or one of the names older exporters write ("MegaBytes",
// "KB"). def is the multiplier when units is empty.
func ovfUnits(units string, def int64) (int64, bool) {
	u := strings.TrimSpace(units)
	if u == "" {
		return def, true
	}
	switch strings.ToLower(u) {
	case "kilobytes", "kb", "kib":
		return 1 << 10, true
	case "megabytes", "mb", "mib":
		return 1 << 20, true
	case "gigabytes", "gb", "gib":
		return 1 << 30, true
	case "terabytes", "tb", "tib":
		return 1 << 40, true
	}
	parts := strings.Split(u, "*")
	base := strings.ToLower(strings.TrimSpace(parts[0]))
	if base != "byte" && base != "bytes" {
		return 0, false
	}
	mult := int64(1)
	for _, part := range parts[1:] {
		part = strings.TrimSpace(part)
		var factor int64
		if b, e, found := strings.Cut(part, "^"); found {
			bv, err1 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
			ev, err2 := strconv.ParseInt(strings.TrimSpace(e), 10, 64)
			if err1 != nil || err2 != nil || bv < 2 || ev < 0 || ev > 63 {
				return 0, false
			}
			factor = 1
			for range ev {
				var ok bool
				if factor, ok = mul64(factor, bv); !ok {
					return 0, false
				}
			}
		} else {
			v, err := strconv.ParseInt(part, 10, 64)
			if err != nil || v <= 0 {
				return 0, false
			}
			factor = v
		}
		var ok bool
		if mult, ok = mul64(mult, factor); !ok {
			return 0, false
		}
	}
	return mult, true
}

// finish checks the references inside the descriptor and resolves each system's hardware.
func (p *ovfParser) finish() {
	info := &p.info
	if p.defaultConfig == "" && len(info.Configurations) > 0 {
		p.defaultConfig = info.Configurations[0]
	}
	info.DefaultConfiguration = p.defaultConfig

	files := map[string]bool{}
	hrefs := map[string]bool{}
	for _, file := range info.Files {
		switch {
		case file.ID == "":
			p.f.add(FindOVFStructure, "a file (href %q) has no id", file.Href)
		case files[file.ID]:
			p.f.add(FindOVFStructure, "file id %q is used twice", file.ID)
		}
		files[file.ID] = true
		if file.Href == "" {
			p.f.add(FindOVFStructure, "file %q has no href", file.ID)
			continue
		}
		if why := ovfHrefProblem(file.Href); why != "" {
			p.f.add(FindOVFReference, "file %q: href %q %s: an importer would fetch or write outside the package", file.ID, file.Href, why)
		}
		key := path.Clean(file.Href)
		if hrefs[key] {
			p.f.add(FindOVFStructure, "two files have the same href %q", file.Href)
		}
		hrefs[key] = true
	}
	disks := map[string]bool{}
	for _, d := range info.Disks {
		switch {
		case d.ID == "":
			p.f.add(FindOVFStructure, "a disk has no diskId")
		case disks[d.ID]:
			p.f.add(FindOVFStructure, "disk id %q is used twice", d.ID)
		}
		disks[d.ID] = true
		if d.FileRef != "" && !files[d.FileRef] {
			p.f.add(FindOVFStructure, "disk %q refers to file %q, which References does not list", d.ID, d.FileRef)
		}
		if d.ParentRef != "" && !disksDeclared(info.Disks, d.ParentRef) {
			p.f.add(FindOVFStructure, "disk %q has parent %q, which DiskSection does not list", d.ID, d.ParentRef)
		}
	}
	for _, s := range p.all {
		p.hardware(s, files, disks)
	}
}

func disksDeclared(ds []OVFDisk, id string) bool {
	for _, d := range ds {
		if d.ID == id {
			return true
		}
	}
	return false
}

// ovfResourceNames names the CIM ResourceType values of controllers (DSP1041, CIM_ResourceAllocationSettingData).
var ovfResourceNames = map[string]string{
	"1": "other", "5": "ide", "6": "scsi", "7": "fc", "8": "iscsi", "9": "ib", "20": "sata", "23": "usb",
}

// applies reports whether an item belongs to the configuration cfg: items without
// ovf:configuration belong to every configuration.
func (it *ovfItem) applies(cfg string) bool {
	if it.config == "" {
		return true
	}
	for _, c := range strings.Fields(it.config) {
		if c == cfg {
			return true
		}
	}
	return false
}

// hardware resolves a system's items for the default configuration: an item written for
// that configuration replaces a general one with the same InstanceID.
func (p *ovfParser) hardware(s *ovfSystem, files, disks map[string]bool) {
	vs := &p.info.VirtualSystems[s.index]
	var items []*ovfItem
	byID := map[string]int{}
	for i := range s.items {
		it := &s.items[i]
		if !it.applies(p.defaultConfig) {
			continue
		}
		if j, ok := byID[it.instanceID]; ok && it.instanceID != "" {
			if it.config != "" || items[j].config == "" {
				items[j] = it
			}
			continue
		}
		byID[it.instanceID] = len(items)
		items = append(items, it)
	}
	all := map[string]bool{}
	for i := range s.items {
		all[s.items[i].instanceID] = true
	}
	for _, it := range items {
		if it.parent != "" && !all[it.parent] {
			p.f.add(FindOVFStructure, "virtual system %q: item %q has parent %q, which is not an item of the system", s.id, it.instanceID, it.parent)
		}
		switch it.resourceType {
		case "3":
			if v, err := strconv.ParseInt(it.quantity, 10, 64); err == nil && v > 0 {
				vs.CPUs = v
			}
		case "4":
			v, err := strconv.ParseInt(it.quantity, 10, 64)
			mult, ok := ovfUnits(it.units, 1<<20) // exporters that omit the unit mean MiB
			if err == nil && v >= 0 && ok {
				if b, ok := mul64(v, mult); ok {
					vs.Memory = b
				}
			}
		case "10":
			vs.NICs++
		case "14", "15", "16", "17":
			kind := map[string]string{"14": "floppy", "15": "cdrom", "16": "dvd", "17": "disk"}[it.resourceType]
			if len(vs.Drives) >= maxOVFList {
				continue
			}
			dr := OVFDrive{InstanceID: it.instanceID, Kind: kind, AddressOnParent: it.addressOnParent}
			if it.hostResource != "" {
				typ, id := ovfHostResource(it.hostResource)
				switch {
				case typ == "disk" && disks[id]:
					dr.Disk = id
				case typ == "file" && files[id]:
					dr.File = id
				default:
					p.f.add(FindOVFStructure, "virtual system %q: %s drive %q has HostResource %q, which names no disk or file of the package", s.id, kind, it.instanceID, it.hostResource)
				}
			}
			if it.parent != "" {
				for _, c := range items {
					if c.instanceID == it.parent {
						dr.Controller = ovfResourceNames[c.resourceType]
						dr.ControllerType = c.subType
						if dr.Controller == "" {
							dr.Controller = "type " + c.resourceType
							p.f.add(FindOVFStructure, "virtual system %q: %s drive %q has parent %q, which is not a controller (resource type %s)", s.id, kind, it.instanceID, it.parent, c.resourceType)
						}
						break
					}
				}
			}
			vs.Drives = append(vs.Drives, dr)
		}
	}
}

// ovfHostResource splits "ovf:/disk/ID", "ovf:/file/ID", or the "/disk/ID" form some
// exporters write, into its type and id.
func ovfHostResource(s string) (typ, id string) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "ovf:")
	s = strings.TrimPrefix(s, "//")
	s = strings.TrimPrefix(s, "/")
	typ, id, ok := strings.Cut(s, "/")
	if !ok {
		return "", ""
	}
	return typ, id
}

// ovfHrefProblem says why an href is not a plain name inside the package ("" when it is):
// a URL, an absolute path, a path that climbs out with "..", or one that only a Windows
// importer would read as a path (backslashes, drive letters). hrefs are URI references, so
// the percent-decoded form is checked too.
func ovfHrefProblem(href string) string {
	if why := ovfNameProblem(href, true); why != "" {
		return why
	}
	if dec, err := url.PathUnescape(href); err == nil && dec != href {
		if why := ovfNameProblem(dec, true); why != "" {
			return why + " once percent-decoded"
		}
	}
	return ""
}

// ovfNameProblem checks a name that must stay inside the package: an OVF href (uri true)
// or an OVA member name.
func ovfNameProblem(name string, uri bool) string {
	switch {
	case name == "":
		return "is empty"
	case strings.ContainsRune(name, 0):
		return "contains a NUL byte"
	case strings.Contains(name, `\`):
		return "contains a backslash, a path separator on Windows"
	}
	if uri {
		if i := strings.IndexAny(name, ":/?#"); i > 0 && name[i] == ':' {
			return fmt.Sprintf("is a URL or drive path (%q)", name[:i+1])
		}
	} else if len(name) >= 2 && name[1] == ':' && ('a' <= name[0]|0x20 && name[0]|0x20 <= 'z') {
		return "starts with a drive letter"
	}
	if strings.HasPrefix(name, "/") || filepath.IsAbs(name) {
		return "is an absolute path"
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return `climbs out of the package with ".."`
		}
	}
	if !filepath.IsLocal(name) {
		return "is not a local name"
	}
	return ""
}

// ovfFormatFromURI gives the disk format an OVF format URI names, or "" when it names none
// that glimpse knows. The URI is informative only: glimpse probes the disk's content.
func ovfFormatFromURI(uri string) Format {
	u := strings.ToLower(uri)
	switch {
	case strings.Contains(u, "vmdk"):
		return VMDK
	case strings.Contains(u, "qcow"):
		return QCOW2
	case strings.Contains(u, "vhdx"):
		return VHDX
	case strings.Contains(u, "vhd"):
		return VHD
	case strings.Contains(u, "vdi"):
		return VDI
	}
	return ""
}

// ovfSelectDisk picks the disk that OpenOptions.Disk names: a diskId, the href (member name)
// of the disk's file, or a 0-based index among the DiskSection's disks. Empty picks the
// first disk; -1 means there is none.
func ovfSelectDisk(info *OVFInfo, sel string) (int, error) {
	if len(info.Disks) == 0 {
		if sel != "" {
			return -1, fmt.Errorf("no disk %q: the descriptor lists no disks", sel)
		}
		return -1, nil
	}
	if sel == "" {
		return 0, nil
	}
	for i, d := range info.Disks {
		if d.ID == sel {
			return i, nil
		}
	}
	for i, d := range info.Disks {
		for _, f := range info.Files {
			if f.ID == d.FileRef && d.FileRef != "" && path.Clean(f.Href) == path.Clean(sel) {
				return i, nil
			}
		}
	}
	if n, err := strconv.Atoi(sel); err == nil && n >= 0 && n < len(info.Disks) {
		return n, nil
	}
	names := make([]string, len(info.Disks))
	for i, d := range info.Disks {
		names[i] = strconv.Quote(d.ID)
	}
	return -1, fmt.Errorf("no disk %q: the disks are %s (or their index, 0 to %d)", sel, strings.Join(names, ", "), len(info.Disks)-1)
}

// probeOVF matches an XML document whose root element is an Envelope in an OVF namespace.
// It looks at the head window only: a cheap byte test first (the document starts with "<"
// after an optional BOM and white space, and mentions "Envelope"), then the XML tokens up
// to the root element.
func probeOVF(p *probeData) bool {
	head := bytes.TrimPrefix(p.head, []byte("\xef\xbb\xbf"))
	head = bytes.TrimLeft(head, " \t\r\n")
	if len(head) == 0 || head[0] != '<' || !bytes.Contains(head, []byte("Envelope")) {
		return false
	}
	dec := xml.NewDecoder(bytes.NewReader(head))
	dec.CharsetReader = ovfCharset
	for range 64 { // prolog, comments and processing instructions before the root
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return t.Name.Local == "Envelope" && ovfNamespace(t.Name.Space)
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return false
			}
		}
	}
	return false
}

// ovfCore is a standalone descriptor: it describes a virtual system but holds no guest data.
type ovfCore struct {
	info  *OVFInfo
	vsize int64
	disk  int // the selected disk, -1 when none
	finds []Finding
}

// openOVF parses a standalone descriptor.
//
// Its virtual size is the capacity of the disk OpenOptions.Disk selects (the first by
// default), or 0 when it lists none: the descriptor is what an importer sizes the virtual
// machine's disk from, so `info` shows that size and a MaxVirtualSize policy rejects a
// descriptor that claims a huge disk before anyone fetches the disk file.
func openOVF(o *opener) (core, error) {
	if !ovfLooksXML(o.probe) {
		return nil, wrongFormat(OVF, "not an XML document")
	}
	c := &ovfCore{disk: -1}
	n := int64(-1)
	if o.sizeKnown {
		n = o.size
	}
	info, finds, err := parseOVFAt(o.r, 0, n, "")
	switch {
	case errors.Is(err, errOVFTooLarge):
		finds = []Finding{{FindTooLarge, fmt.Sprintf("the descriptor is larger than %d bytes; glimpse does not read it", maxOVFSize)}}
		c.info = &OVFInfo{}
	case err != nil:
		return nil, err
	default:
		c.info = info
	}
	// A standalone descriptor cannot know whether the files it names exist: only names
	// that leave the package (found by the parser) are findings.
	c.disk, err = ovfSelectDisk(c.info, o.opt.Disk)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.name, err)
	}
	if c.disk >= 0 {
		c.vsize = c.info.Disks[c.disk].Capacity
	}
	c.finds = finds
	return c, nil
}

// ovfLooksXML is the check openOVF makes before parsing: the file starts like XML. Anything
// else is not an OVF at all (ErrWrongFormat); XML that is not an OVF envelope is a finding.
func ovfLooksXML(p *probeData) bool {
	if p == nil {
		return false
	}
	head := bytes.TrimPrefix(p.head, []byte("\xef\xbb\xbf"))
	head = bytes.TrimLeft(head, " \t\r\n")
	return len(head) > 0 && head[0] == '<'
}

func (c *ovfCore) size() int64 { return c.vsize }

func (c *ovfCore) describe(info *Info) {
	info.FormatSpecific = &FormatSpecific{Type: OVF, Data: c.info}
}

func (c *ovfCore) findings() []Finding { return c.finds }

// lookup fails: a descriptor holds no guest data. Reading its range as zeros would make
// `convert` write an empty disk of the capacity without a word; ErrUnsupported says what is
// true, that the disk is in another file.
func (c *ovfCore) lookup(off int64) (segment, error) {
	what := "no disk"
	if c.disk >= 0 {
		d := c.info.Disks[c.disk]
		what = fmt.Sprintf("disk %q", d.ID)
		for _, f := range c.info.Files {
			if f.ID == d.FileRef && d.FileRef != "" {
				what = fmt.Sprintf("disk %q in file %q", d.ID, f.Href)
			}
		}
	}
	return segment{}, unsupported(OVF, "the descriptor holds no guest data: open the %s, or the OVA that holds it", what)
}
