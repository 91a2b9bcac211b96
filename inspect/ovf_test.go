package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"glimpse/internal/qemutest"
)

// ovfDoc writes a small OVF 1.x descriptor: files are "id=href[|size]" and disks
// "diskId=fileRef:capacity:units" (fileRef empty for an empty disk).
func ovfDoc(files, disks []string) string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
`)
	for _, f := range files {
		id, href, _ := strings.Cut(f, "=")
		href, size, ok := strings.Cut(href, "|")
		if ok {
			fmt.Fprintf(&b, "    <File ovf:id=%q ovf:href=%q ovf:size=%q/>\n", id, href, size)
		} else {
			fmt.Fprintf(&b, "    <File ovf:id=%q ovf:href=%q/>\n", id, href)
		}
	}
	b.WriteString("  </References>\n  <DiskSection>\n    <Info>disks</Info>\n")
	for _, d := range disks {
		id, rest, _ := strings.Cut(d, "=")
		parts := strings.SplitN(rest, ":", 3)
		ref := ""
		if parts[0] != "" {
			ref = fmt.Sprintf(" ovf:fileRef=%q", parts[0])
		}
		fmt.Fprintf(&b, "    <Disk ovf:diskId=%q%s ovf:capacity=%q ovf:capacityAllocationUnits=%q ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>\n",
			id, ref, parts[1], parts[2])
	}
	b.WriteString(`  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <Name>vm</Name>
    <VirtualHardwareSection>
      <Info>hardware</Info>
      <Item>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>512</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
`)
	for i, d := range disks {
		id, _, _ := strings.Cut(d, "=")
		fmt.Fprintf(&b, `      <Item>
        <rasd:AddressOnParent>%d</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/%s</rasd:HostResource>
        <rasd:InstanceID>%d</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
`, i, id, 10+i)
	}
	b.WriteString("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n")
	return b.String()
}

func ovfWriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ovfCrafted are descriptors written by the tests, with what each must report.
func ovfCrafted() []struct {
	name, doc string
	findings  []string
} {
	big := ovfDoc([]string{"f1=disk.vmdk"}, []string{"d1=f1:1:byte * 2^30"})
	big = strings.Replace(big, "<Info>disks</Info>", "<Info>"+strings.Repeat("x", maxOVFSize)+"</Info>", 1)
	var many strings.Builder
	many.WriteString(`<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References>`)
	for range maxOVFElements + 10 {
		many.WriteString("<a/>")
	}
	many.WriteString(`</References></Envelope>`)
	deep := `<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">` + strings.Repeat("<a>", 100) + strings.Repeat("</a>", 100) + `</Envelope>`
	return []struct {
		name, doc string
		findings  []string
	}{
		{"clean.ovf", ovfDoc([]string{"f1=disk.vmdk|1024", "f2=sub/dir/cd.iso"}, []string{"d1=f1:4:byte * 2^30", "d2=:512:byte * 2^20"}), nil},
		{"href-absolute.ovf", ovfDoc([]string{"f1=/etc/shadow"}, []string{"d1=f1:1:byte * 2^30"}), []string{FindOVFReference}},
		{"href-dotdot.ovf", ovfDoc([]string{"f1=../../disk.vmdk"}, []string{"d1=f1:1:byte * 2^30"}), []string{FindOVFReference}},
		{"href-http.ovf", ovfDoc([]string{"f1=http://example.com/disk.vmdk"}, []string{"d1=f1:1:byte * 2^30"}), []string{FindOVFReference}},
		{"href-file.ovf", ovfDoc([]string{"f1=file:///var/lib/disk.vmdk"}, []string{"d1=f1:1:byte * 2^30"}), []string{FindOVFReference}},
		{"href-percent.ovf", ovfDoc([]string{"f1=%2e%2e/disk.vmdk"}, []string{"d1=f1:1:byte * 2^30"}), []string{FindOVFReference}},
		{"href-backslash.ovf", ovfDoc([]string{`f1=..\disk.vmdk`}, []string{"d1=f1:1:byte * 2^30"}), []string{FindOVFReference}},
		{"dangling-fileref.ovf", ovfDoc([]string{"f1=disk.vmdk"}, []string{"d1=f9:1:byte * 2^30"}), []string{FindOVFStructure}},
		{"bad-units.ovf", ovfDoc([]string{"f1=disk.vmdk"}, []string{"d1=f1:1:furlongs"}), []string{FindOVFStructure}},
		{"overflow.ovf", ovfDoc([]string{"f1=disk.vmdk"}, []string{"d1=f1:9223372036854775807:byte * 2^30"}), []string{FindOVFStructure}},
		{"truncated.ovf", ovfDoc([]string{"f1=disk.vmdk"}, []string{"d1=f1:1:byte * 2^30"})[:700], []string{FindOVFStructure}},
		{"wrong-root.ovf", `<?xml version="1.0"?><html><body>not an appliance</body></html>`, []string{FindOVFStructure}},
		{"wrong-namespace.ovf", `<Envelope xmlns="http://example.com/not-ovf"><References/></Envelope>`, []string{FindOVFStructure}},
		{"entity.ovf", `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References>&a;</References></Envelope>`, []string{FindOVFStructure}},
		{"too-large.ovf", big, []string{FindTooLarge}},
		{"many-elements.ovf", many.String(), []string{FindTooLarge}},
		{"deep.ovf", deep, []string{FindOVFStructure}},
	}
}

// ovfFixtures are the standalone descriptors: the third-party samples (used in place) and
// the crafted ones, written into dir. qemu-img has no OVF driver, and a descriptor holds no
// guest data.
//
// wrong-root.ovf and wrong-namespace.ovf are XML without an OVF envelope: undeclared they
// probe as raw (which is what they are to qemu); declared ovf, they are OVFs with an
// ovf-structure finding (TestOVFCrafted).
func ovfFixtures(t testing.TB, dir string) []fixture {
	dir = filepath.Join(dir, "ovf-fixtures")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var out []fixture
	for _, c := range ovfCrafted() {
		fx := fixture{name: "ovf/" + c.name, path: ovfWriteFile(t, dir, c.name, []byte(c.doc)), qemuFormat: "-", format: OVF, findings: c.findings}
		if c.name == "wrong-root.ovf" || c.name == "wrong-namespace.ovf" {
			fx.qemuFormat, fx.format, fx.findings, fx.readable = "", Raw, nil, true
		}
		out = append(out, fx)
	}
	if qemutest.SharedDirOrEmpty() != "" {
		for _, s := range ovfSamples {
			out = append(out, fixture{name: "ovf/cot/" + s.name, path: qemutest.ThirdParty(t, "cot/"+s.name), qemuFormat: "-", format: OVF, findings: s.findings})
		}
	}
	return out
}

// ovfSamples is what glimpse reports for the cot descriptors. invalid.ovf is inconsistent
// on purpose: its disk "flash2" names a file References does not list, a disk drive has the
// HostResource "nonexistent.vmdk", and the CD drive's parent is a network adapter.
var ovfSamples = []struct {
	name     string
	findings []string
	version  string
	size     int64
	disks    int
	cpus     int64
	memory   int64
	drives   []string // kind:disk-or-file:controller
}{
	{"input.ovf", nil, "1.x", 1 << 30, 1, 4, 4 << 30, []string{"disk:vmdisk1:scsi", "cdrom:file2:ide", "cdrom::ide"}},
	{"ubuntu.2.0.ovf", nil, "2.0", 8 << 30, 1, 1, 512 << 20, []string{"disk:vmdisk1:sata", "cdrom::ide"}},
	{"minimal.ovf", nil, "1.x", 0, 0, 0, 0, nil},
	{"invalid.ovf", []string{FindOVFStructure}, "1.x", 1 << 30, 2, 3, 0, []string{"disk::ide", "cdrom:input.iso:type 10"}},
	{"v0.9.ovf", nil, "0.9", 1 << 30, 1, 1, 8 << 30, []string{"cdrom::ide", "disk:vmdisk1:scsi"}},
	{"vmware.ovf", nil, "1.x", 1 << 30, 1, 2, 1536 << 20, []string{"disk:vmdisk1:scsi"}},
}

func ovfCodes(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		if !slices.Contains(out, f.Code) {
			out = append(out, f.Code)
		}
	}
	slices.Sort(out)
	return out
}

func ovfSameCodes(got []Finding, want []string) bool {
	w := slices.Clone(want)
	slices.Sort(w)
	w = slices.Compact(w)
	return slices.Equal(ovfCodes(got), w)
}

func TestOVFSamples(t *testing.T) {
	for _, s := range ovfSamples {
		t.Run(s.name, func(t *testing.T) {
			p := qemutest.ThirdParty(t, "cot/"+s.name)
			if f, err := ovfProbeFile(t, p); err != nil || f != OVF {
				t.Fatalf("Probe = %v, %v; want ovf", f, err)
			}
			img := openT(t, p, OpenOptions{})
			info := img.Info()
			if info.Format != OVF || info.VirtualSize != s.size {
				t.Errorf("format %s size %d, want ovf %d", info.Format, info.VirtualSize, s.size)
			}
			if !ovfSameCodes(img.Safety(), s.findings) {
				t.Errorf("findings %v, want %v", img.Safety(), s.findings)
			}
			o := info.FormatSpecific.Data.(*OVFInfo)
			if o.Version != s.version || len(o.Disks) != s.disks {
				t.Errorf("version %q, %d disks; want %q, %d", o.Version, len(o.Disks), s.version, s.disks)
			}
			if len(o.VirtualSystems) != 1 {
				t.Fatalf("%d virtual systems, want 1", len(o.VirtualSystems))
			}
			vs := o.VirtualSystems[0]
			if vs.CPUs != s.cpus || vs.Memory != s.memory {
				t.Errorf("cpus %d memory %d, want %d %d", vs.CPUs, vs.Memory, s.cpus, s.memory)
			}
			var drives []string
			for _, d := range vs.Drives {
				drives = append(drives, d.Kind+":"+d.Disk+d.File+":"+d.Controller)
			}
			if !slices.Equal(drives, s.drives) {
				t.Errorf("drives %q, want %q", drives, s.drives)
			}
			// A descriptor holds no guest data: reads fail with ErrUnsupported.
			if img.Size() > 0 {
				if _, err := img.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrUnsupported) {
					t.Errorf("ReadAt: %v, want ErrUnsupported", err)
				}
				if _, err := img.Extent(0, 0); !errors.Is(err, ErrUnsupported) {
					t.Errorf("Extent: %v, want ErrUnsupported", err)
				}
			}
			if r := img.Check(); !r.Clean() {
				t.Errorf("Check: %+v", r)
			}
		})
	}
}

// ovfProbeFile probes a file by path.
func ovfProbeFile(t testing.TB, p string) (Format, error) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return Probe(f, st.Size())
}

func TestOVFSampleDetail(t *testing.T) {
	p := qemutest.ThirdParty(t, "cot/input.ovf")
	o := openT(t, p, OpenOptions{}).Info().FormatSpecific.Data.(*OVFInfo)
	if len(o.Files) != 3 || o.Files[0] != (OVFFile{ID: "file1", Href: "input.vmdk", Size: 152576}) {
		t.Errorf("files %+v", o.Files)
	}
	d := o.Disks[0]
	if d.ID != "vmdisk1" || d.FileRef != "file1" || d.Capacity != 1<<30 || d.CapacityUnits != "byte * 2^30" || ovfFormatFromURI(d.Format) != VMDK {
		t.Errorf("disk %+v", d)
	}
	if o.DefaultConfiguration != "4CPU-4GB-3NIC" || len(o.Configurations) != 3 || !slices.Equal(o.Networks, []string{"VM Network"}) {
		t.Errorf("configurations %v default %q networks %v", o.Configurations, o.DefaultConfiguration, o.Networks)
	}
	vs := o.VirtualSystems[0]
	if vs.ID != "test" || vs.Name != "test" || vs.SystemType != "vmx-07 vmx-08" || vs.NICs != 3 || vs.OS == nil || vs.OS.ID != 100 || vs.OS.OSType != "other26xLinux64Guest" {
		t.Errorf("system %+v os %+v", vs, vs.OS)
	}
	vw := openT(t, qemutest.ThirdParty(t, "cot/vmware.ovf"), OpenOptions{}).Info().FormatSpecific.Data.(*OVFInfo)
	if vw.Disks[0].PopulatedSize != 293011456 {
		t.Errorf("populated size %d", vw.Disks[0].PopulatedSize)
	}
}

func TestOVFCrafted(t *testing.T) {
	dir := t.TempDir()
	fixtures := ovfFixtures(t, dir)
	for i, c := range ovfCrafted() {
		fx := fixtures[i]
		t.Run(c.name, func(t *testing.T) {
			img := openT(t, fx.path, OpenOptions{Format: OVF})
			if !ovfSameCodes(img.Safety(), c.findings) {
				t.Errorf("findings %v, want %v", img.Safety(), c.findings)
			}
			if f, err := ovfProbeFile(t, fx.path); err != nil || f != fx.format {
				t.Errorf("Probe = %v, %v; want %s", f, err, fx.format)
			}
			for _, f := range img.Safety() {
				if f.Message == "" {
					t.Errorf("finding without a message: %v", f)
				}
			}
		})
	}
	dir = filepath.Join(dir, "ovf-fixtures")
	img := openT(t, filepath.Join(dir, "clean.ovf"), OpenOptions{})
	if img.Info().Format != OVF || img.Size() != 4<<30 {
		t.Errorf("clean.ovf: %s %d", img.Info().Format, img.Size())
	}
	for sel, want := range map[string]int64{"": 4 << 30, "1": 512 << 20, "d2": 512 << 20, "disk.vmdk": 4 << 30} {
		img := openT(t, filepath.Join(dir, "clean.ovf"), OpenOptions{Disk: sel})
		if img.Size() != want {
			t.Errorf("Disk %q: size %d, want %d", sel, img.Size(), want)
		}
	}
	if _, err := OpenFile(filepath.Join(dir, "clean.ovf"), OpenOptions{Disk: "7"}); err == nil {
		t.Error("Disk 7 of 2 opened")
	}
}

// A VirtualSystemCollection: every system is listed with its collection, nested ones too.
func TestOVFCollection(t *testing.T) {
	doc := `<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References/>
  <VirtualSystemCollection ovf:id="app">
    <Info>two tiers</Info>
    <VirtualSystem ovf:id="web"><Info/><Name>web server</Name>
      <VirtualHardwareSection><Info/>
        <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      </VirtualHardwareSection>
    </VirtualSystem>
    <VirtualSystemCollection ovf:id="backend">
      <Info/>
      <VirtualSystem ovf:id="db"><Info/>
        <VirtualHardwareSection><Info/>
          <Item><rasd:AllocationUnits>GigaBytes</rasd:AllocationUnits><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>
        </VirtualHardwareSection>
      </VirtualSystem>
    </VirtualSystemCollection>
  </VirtualSystemCollection>
</Envelope>`
	img, err := Open(strings.NewReader(doc), int64(len(doc)), OpenOptions{Name: "app.ovf"})
	if err != nil {
		t.Fatal(err)
	}
	o := img.Info().FormatSpecific.Data.(*OVFInfo)
	if len(img.Safety()) != 0 || img.Size() != 0 || !slices.Equal(o.Collections, []string{"app", "backend"}) || len(o.VirtualSystems) != 2 {
		t.Fatalf("findings %v, size %d, %+v", img.Safety(), img.Size(), o)
	}
	web, db := o.VirtualSystems[0], o.VirtualSystems[1]
	if web.ID != "web" || web.Name != "web server" || web.Collection != "app" || web.CPUs != 2 {
		t.Errorf("web %+v", web)
	}
	if db.ID != "db" || db.Collection != "backend" || db.Memory != 8<<30 {
		t.Errorf("db %+v", db)
	}
}

func TestOVFProbe(t *testing.T) {
	yes := []string{
		`<?xml version="1.0"?>` + "\n<!-- exported -->\n" + `<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"/>`,
		"\xef\xbb\xbf  <Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/2\"></Envelope>",
		`<Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope"/>`,
		`<?xml version="1.0" encoding="ISO-8859-1"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>`,
	}
	no := []string{
		`<?xml version="1.0"?><html>Envelope</html>`,
		`<Envelope xmlns="urn:other"/>`,
		`Envelope <Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>`,
		"",
		"\x00\x00\x00\x00",
	}
	for _, s := range yes {
		if f, err := Probe(strings.NewReader(s), int64(len(s))); err != nil || f != OVF {
			t.Errorf("Probe(%q) = %v, %v; want ovf", s, f, err)
		}
	}
	for _, s := range no {
		if f, _ := Probe(strings.NewReader(s), int64(len(s))); f == OVF {
			t.Errorf("Probe(%q) = ovf", s)
		}
	}
	// Declared ovf: bytes that are not XML at all are the wrong format; XML that is not an
	// OVF envelope is an OVF with a structure finding.
	bin := []byte("QFI\xfb\x00\x00\x00\x03")
	if _, err := Open(bytes.NewReader(bin), int64(len(bin)), OpenOptions{Format: OVF}); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("declared ovf on binary: %v, want ErrWrongFormat", err)
	}
}

func TestOVFUnits(t *testing.T) {
	for in, want := range map[string]int64{
		"": 7, "byte": 1, "byte * 2^30": 1 << 30, "byte*2^20": 1 << 20, "byte * 10^9": 1e9,
		"byte * 1024": 1024, "MegaBytes": 1 << 20, "GB": 1 << 30, "byte * 2^10 * 2^10": 1 << 20,
	} {
		if got, ok := ovfUnits(in, 7); !ok || got != want {
			t.Errorf("ovfUnits(%q) = %d, %v; want %d", in, got, ok, want)
		}
	}
	for _, in := range []string{"hertz * 10^6", "byte * 2^64", "byte * 10^19", "byte * 2^", "byte * -1", "byte * 1^5", "byte * 2^9999999999"} {
		if got, ok := ovfUnits(in, 1); ok {
			t.Errorf("ovfUnits(%q) = %d, accepted", in, got)
		}
	}
}

func TestOVFNames(t *testing.T) {
	for _, ok := range []string{"disk.vmdk", "sub/disk.vmdk", "./disk.vmdk", "disk 1.vmdk"} {
		if why := ovfHrefProblem(ok); why != "" {
			t.Errorf("%q: %s", ok, why)
		}
	}
	for _, bad := range []string{"", "/disk", "../disk", "a/../../b", "a/../b", "http://h/x", "https://h/x", "file:///x", "C:disk",
		`C:\disk`, `..\disk`, "%2e%2e/disk", "%2Fdisk", "ftp:x"} {
		if why := ovfHrefProblem(bad); why == "" {
			t.Errorf("%q accepted", bad)
		}
	}
}

// ovfFailingReader serves data up to fail, then returns err: the stream inspector's
// "not seen yet" looks like this to a parser.
type ovfFailingReader struct {
	data []byte
	fail int64
	err  error
}

var ovfErrNotYet = errors.New("not seen yet")

func (f *ovfFailingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.fail {
		n := 0
		if off < f.fail {
			n = copy(p, f.data[off:f.fail])
		}
		return n, f.err
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// A read error while parsing is returned (wrapped), never mistaken for malformed XML.
func TestOVFReadErrorPassesThrough(t *testing.T) {
	doc := []byte(ovfDoc([]string{"f1=disk.vmdk"}, []string{"d1=f1:1:byte * 2^30"}))
	p, err := readProbe(bytes.NewReader(doc), int64(len(doc)))
	if err != nil {
		t.Fatal(err)
	}
	for _, fail := range []int64{0, 10, 500, int64(len(doc)) - 1} {
		r := &ovfFailingReader{data: doc, fail: fail, err: ovfErrNotYet}
		o := &opener{r: r, size: int64(len(doc)), sizeKnown: true, name: "x.ovf", probe: p}
		_, err := openOVF(o)
		if !errors.Is(err, ovfErrNotYet) {
			t.Errorf("fail at %d: %v, want ovfErrNotYet", fail, err)
		}
	}
	// While a stream is arriving the size is unknown: the parser reads until the reader
	// says the bytes have not arrived, and returns that.
	r := &ovfFailingReader{data: doc, fail: int64(len(doc)), err: ovfErrNotYet}
	o := &opener{r: r, size: unknownSize, sizeKnown: false, name: "x.ovf", probe: p}
	if _, err := openOVF(o); !errors.Is(err, ovfErrNotYet) {
		t.Errorf("streaming: %v, want ovfErrNotYet", err)
	}
	// Once the end is known it parses.
	o = &opener{r: bytes.NewReader(doc), size: unknownSize, sizeKnown: false, name: "x.ovf", probe: p}
	c, err := openOVF(o)
	if err != nil || c.size() != 1<<30 || len(c.findings()) != 0 {
		t.Errorf("streaming, whole document: %v", err)
	}
}

func FuzzOVF(f *testing.F) {
	for _, c := range ovfCrafted() {
		if len(c.doc) < 64<<10 {
			f.Add([]byte(c.doc))
		}
	}
	f.Add([]byte(`<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><VirtualSystemCollection><VirtualSystem><Name><VirtualSystem/></Name></VirtualSystem></VirtualSystemCollection></Envelope>`))
	f.Add([]byte(`<Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><Section xsi:type="ovf:DiskSection_Type"><Disk capacity="1" diskId="a"/></Section></Envelope>`))
	thirdPartySeed(f, "cot/input.ovf", "cot/ubuntu.2.0.ovf", "cot/minimal.ovf", "cot/invalid.ovf", "cot/v0.9.ovf", "cot/vmware.ovf")
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, OVF)
	})
}
