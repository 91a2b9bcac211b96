package inspect

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"

	"glimpse/internal/qemutest"
)

// fixtureSets are every format's fixture builders; the tests below run them all.
var fixtureSets = []struct {
	name  string
	build func(testing.TB, string) []fixture
}{
	{"raw", rawFixtures},
	{"qcow2", qcow2Fixtures},
	{"qed", qedFixtures},
	{"vmdk", vmdkFixtures},
	{"vhd", vhdFixtures},
	{"vhdx", vhdxFixtures},
	{"vdi", vdiFixtures},
	{"luks", luksFixtures},
	{"iso", isoFixtures},
	{"ovf", ovfFixtures},
	{"ova", ovaFixtures},
}

var (
	allOnce sync.Once
	allFx   []fixture
	allDir  string
)

// allFixtures builds every format's fixtures once per test binary.
func allFixtures(t *testing.T) []fixture {
	t.Helper()
	allOnce.Do(func() {
		dir, err := os.MkdirTemp("", "glimpse-fixtures-")
		if err != nil {
			t.Fatal(err)
		}
		allDir = dir
		for _, set := range fixtureSets {
			sub := filepath.Join(dir, set.name)
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			allFx = append(allFx, set.build(t, sub)...)
		}
	})
	if len(allFx) == 0 {
		t.Fatal("no fixtures were built")
	}
	return allFx
}

func TestMain(m *testing.M) {
	code := m.Run()
	if allDir != "" {
		os.RemoveAll(allDir)
	}
	os.Exit(code)
}

// TestAllFixturesStreamAgrees: every fixture gives the same verdict through the stream
// inspector as through the file inspector, whatever the write size, with and without a
// declared format.
func TestAllFixturesStreamAgrees(t *testing.T) {
	for _, fx := range allFixtures(t) {
		t.Run(fx.name, func(t *testing.T) {
			st, err := os.Stat(fx.path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() > 256<<20 {
				t.Skipf("%d bytes: too large to hold in memory for this test", st.Size())
			}
			data, err := os.ReadFile(fx.path)
			if err != nil {
				t.Fatal(err)
			}
			v := checkStreamAgrees(t, fx.name, data, OpenOptions{})
			if v.Format != fx.format {
				t.Errorf("detected %s, want %s", v.Format, fx.format)
			}
			checkStreamAgrees(t, fx.name, data, OpenOptions{Format: fx.format})
		})
	}
}

// TestAllFixturesFindings: each fixture reports exactly the findings its builder expects,
// through Examine (the verdict the CLI and the servers use).
func TestAllFixturesFindings(t *testing.T) {
	for _, fx := range allFixtures(t) {
		t.Run(fx.name, func(t *testing.T) {
			v := ExamineFile(fx.path, OpenOptions{})
			got := findingCodes(v.Findings)
			want := slices.Clone(fx.findings)
			if want == nil {
				want = []string{}
			}
			sort.Strings(got)
			sort.Strings(want)
			got = slices.Compact(got)
			want = slices.Compact(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("findings %v, want %v (%+v)", got, want, v.Findings)
			}
			if v.Format != fx.format {
				t.Errorf("format %s, want %s", v.Format, fx.format)
			}
		})
	}
}

// TestAllFixturesAgainstQemu: format, virtual size and backing file agree with qemu-img
// info for every fixture qemu-img can open, and the guest data with qemu-img convert for
// every readable one.
func TestAllFixturesAgainstQemu(t *testing.T) {
	for _, fx := range allFixtures(t) {
		if fx.qemuFormat == "-" {
			continue
		}
		t.Run(fx.name, func(t *testing.T) {
			img := openT(t, fx.path, OpenOptions{})
			switch fx.format {
			case ISO:
				// qemu-img calls an ISO raw; the size must still agree.
				if q := qemuInfoSize(t, fx.path); q != img.Size() {
					t.Errorf("virtual size %d, qemu-img %d", img.Size(), q)
				}
			case OVA, OVF, LUKS, QED:
				// qemu-img reads an OVA as raw, an OVF as raw text; luks and qed are checked by
				// their own tests.
			default:
				compareWithQemu(t, fx.path, fx.qemuFormat, img.Info())
			}
			if fx.readable && fx.format != OVA && fx.format != OVF {
				validate(t, img)
				compareGuestWithQemu(t, fx.path, fx.qemuFormat, img)
			}
		})
	}
}

func qemuInfoSize(t *testing.T, path string) int64 {
	t.Helper()
	return qemutest.Info(t, path, "").VirtualSize
}
