package convert

import (
	"bufio"
	"context"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// packFixture builds two source disks with qemu-img (a raw and a qcow2, with data) and
// packs them into an OVA.
func packFixture(t *testing.T, opt PackOptions) (out string, srcs []string) {
	t.Helper()
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	a := qemutest.Create(t, dir, "a.raw", "raw", "5M")
	qemutest.IO(t, a, "raw", "write -P 0x61 0 1M", "write -P 0x62 4M 512")
	b := qemutest.Create(t, dir, "b.qcow2", "qcow2", "3M")
	qemutest.IO(t, b, "qcow2", "write -P 0x63 64k 128k")
	var disks []PackDisk
	for i, p := range []string{a, b} {
		img, err := inspect.OpenFile(p, inspect.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		disks = append(disks, PackDisk{Image: img, Name: []string{"system.vmdk", "data.vmdk"}[i]})
	}
	out = filepath.Join(dir, "appliance.ova")
	if err := Pack(context.Background(), disks, out, opt); err != nil {
		t.Fatal(err)
	}
	return out, []string{a, b}
}

func TestPackOVA(t *testing.T) {
	out, srcs := packFixture(t, PackOptions{Name: "appliance"})
	// Member order: the OVF first, then the disks, then the manifest.
	list := qemutest.Run(t, "tar", "-tf", out)
	if got, want := strings.Fields(list), []string{"appliance.ovf", "system.vmdk", "data.vmdk", "appliance.mf"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("members %v, want %v", got, want)
	}
	// The manifest's digests are right (checked by sha256sum itself).
	dir := t.TempDir()
	qemutest.Run(t, "tar", "-xf", out, "-C", dir)
	mf, err := os.ReadFile(filepath.Join(dir, "appliance.mf"))
	if err != nil {
		t.Fatal(err)
	}
	var sums strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(mf)))
	for sc.Scan() {
		// "SHA256(name)= hex" -> "hex  name" for sha256sum -c
		line := sc.Text()
		name := line[strings.Index(line, "(")+1 : strings.Index(line, ")")]
		sums.WriteString(strings.TrimSpace(line[strings.Index(line, "=")+1:]) + "  " + name + "\n")
	}
	cmd := exec.Command("sha256sum", "-c", "-")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(sums.String())
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, b)
	}
	// OVF capacities match the disks.
	ovf, err := os.ReadFile(filepath.Join(dir, "appliance.ovf"))
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Disks []struct {
			Capacity string `xml:"capacity,attr"`
			Format   string `xml:"format,attr"`
		} `xml:"DiskSection>Disk"`
	}
	if err := xml.Unmarshal(ovf, &env); err != nil {
		t.Fatalf("OVF: %v", err)
	}
	for i, src := range srcs {
		q := qemutest.Info(t, src, "")
		if len(env.Disks) != 2 || env.Disks[i].Capacity != strconv.FormatInt(q.VirtualSize, 10) || !strings.HasSuffix(env.Disks[i].Format, "#streamOptimized") {
			t.Fatalf("disk %d in the OVF: %+v, want capacity %d", i, env.Disks, q.VirtualSize)
		}
		// qemu-img reads each extracted disk as streamOptimized with the source's contents.
		vmdk := filepath.Join(dir, []string{"system.vmdk", "data.vmdk"}[i])
		if got := qemutest.Info(t, vmdk, ""); got.Format != "vmdk" || got.VirtualSize != q.VirtualSize {
			t.Fatalf("%s: %+v", vmdk, got)
		}
		qemutest.Img(t, "compare", src, vmdk)
	}
	// glimpse info reports an OVA, clean, with the disks inside and their formats, and reads
	// each disk in place.
	img, err := inspect.OpenFile(out, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	info := img.Info()
	if info.Format != inspect.OVA || len(info.Safety) != 0 || len(info.Children) != 2 {
		t.Fatalf("info: format %s, safety %v, %d children", info.Format, info.Safety, len(info.Children))
	}
	for i, ch := range info.Children {
		if ch.Format != inspect.VMDK {
			t.Errorf("child %d is %s", i, ch.Format)
		}
		d, err := inspect.OpenFile(out, inspect.OpenOptions{Disk: strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := qemutest.ConvertSHA256(t, srcs[i], "")
		if got, _ := streamSHA256(t, d, Options{}); got != want {
			t.Errorf("disk %d read in place: %s, want %s", i, got, want)
		}
		d.Close()
	}
}

func TestPackDeterministic(t *testing.T) {
	a, _ := packFixture(t, PackOptions{Disk: FormatOptions{Options: map[string]string{"cid": "1234"}}})
	b, _ := packFixture(t, PackOptions{Disk: FormatOptions{Options: map[string]string{"cid": "1234"}}})
	ha, _ := qemutest.FileSHA256(t, a)
	hb, _ := qemutest.FileSHA256(t, b)
	if ha != hb {
		t.Fatal("the same disks and options packed twice differ")
	}
}

func TestPackRefusesBadNames(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	img, err := inspect.OpenFile(qemutest.Create(t, dir, "a.raw", "raw", "1M"), inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, name := range []string{"../x.vmdk", "/abs.vmdk", "sub/x.vmdk", "x.ovf"} {
		out := filepath.Join(dir, "x.ova")
		if err := Pack(context.Background(), []PackDisk{{Image: img, Name: name}}, out, PackOptions{}); err == nil {
			t.Errorf("disk name %q accepted", name)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("disk name %q: %s left behind", name, out)
		}
	}
}

func TestUnpackOVA(t *testing.T) {
	out, srcs := packFixture(t, PackOptions{Name: "appliance"})
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := filepath.Join(t.TempDir(), "x")
	res, err := Unpack(context.Background(), f, out, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 4 || !res.Verdict.Safe() || res.Verdict.Format != inspect.OVA {
		t.Fatalf("unpack: %+v", res)
	}
	qemutest.Img(t, "compare", srcs[0], filepath.Join(dir, "system.vmdk"))

	// A damaged disk: the manifest no longer matches; nothing is left behind.
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	bad := filepath.Join(t.TempDir(), "bad.ova")
	if err := os.WriteFile(bad, data, 0o644); err != nil {
		t.Fatal(err)
	}
	g, _ := os.Open(bad)
	defer g.Close()
	dir2 := filepath.Join(t.TempDir(), "y")
	res, err = Unpack(context.Background(), g, bad, dir2)
	if err == nil || !strings.Contains(err.Error(), "ova-manifest") {
		t.Fatalf("damaged archive: %v", err)
	}
	if ents, _ := os.ReadDir(dir2); len(ents) != 0 {
		t.Fatalf("files left after a refused unpack: %v", ents)
	}
}
