package store

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/members"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// gopherClient is an Image v2 client for a token of the token file.
func gopherClient(base, token string) *gophercloud.ServiceClient {
	p := &gophercloud.ProviderClient{}
	p.SetToken(token)
	return &gophercloud.ServiceClient{ProviderClient: p, Endpoint: base + "/", ResourceBase: base + "/v2/"}
}

// TestGophercloudWorkflow: gophercloud/v2, unchanged, runs a whole workflow against the store
// under --auth tokens: create, upload, list with filters and paging, show, update, tag,
// share with a member who accepts, download, deactivate, reactivate, delete.
func TestGophercloudWorkflow(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "tokens.json")
	os.WriteFile(file, []byte(`{
		"owner-token": {"project": "owner", "user": "alice", "roles": ["member"]},
		"guest-token": {"project": "guest", "user": "bob", "roles": ["member"]},
		"admin-token": {"project": "ops", "user": "root", "roles": ["admin"]}}`), 0o600)
	auth, err := LoadTokenFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, srv := newServer(t, auth)
	owner, guest := gopherClient(srv.URL, "owner-token"), gopherClient(srv.URL, "guest-token")

	var ids []string
	for _, name := range []string{"cirros", "debian", "ubuntu"} {
		img, err := images.Create(ctx, owner, images.CreateOpts{
			Name: name, DiskFormat: "raw", ContainerFormat: "bare", Visibility: ptr(images.ImageVisibilityShared),
			Tags: []string{"gopher"}, MinRAM: 64, Properties: map[string]string{"os_distro": name},
		}).Extract()
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if img.Status != images.ImageStatusQueued || img.Owner != "owner" {
			t.Fatalf("created %+v", img)
		}
		ids = append(ids, img.ID)
	}
	data := randomBytes(t, 2<<20+3)
	if err := imagedata.Upload(ctx, owner, ids[0], bytes.NewReader(data)).ExtractErr(); err != nil {
		t.Fatalf("upload: %v", err)
	}
	img, err := images.Get(ctx, owner, ids[0]).Extract()
	sum := md5.Sum(data)
	if err != nil || img.Status != images.ImageStatusActive || img.SizeBytes != int64(len(data)) || img.Checksum != hex.EncodeToString(sum[:]) {
		t.Fatalf("get after upload: %+v %v", img, err)
	}

	// List with filters and paging.
	var names []string
	pages := 0
	err = images.List(owner, images.ListOpts{Limit: 1, Tags: []string{"gopher"}, SortKey: "name", SortDir: "asc"}).EachPage(ctx,
		func(_ context.Context, page pagination.Page) (bool, error) {
			pages++
			list, err := images.ExtractImages(page)
			for _, i := range list {
				names = append(names, i.Name)
			}
			return true, err
		})
	if err != nil || !slices.Equal(names, []string{"cirros", "debian", "ubuntu"}) || pages < 3 {
		t.Fatalf("paged list: %v (%d pages) %v", names, pages, err)
	}
	all, err := images.List(owner, images.ListOpts{Status: images.ImageStatusActive}).AllPages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	active, _ := images.ExtractImages(all)
	if len(active) != 1 || active[0].ID != ids[0] {
		t.Fatalf("status filter: %+v", active)
	}

	// Update: name, tags, a property.
	img, err = images.Update(ctx, owner, ids[0], images.UpdateOpts{
		images.ReplaceImageName{NewName: "cirros-0.6"},
		images.ReplaceImageTags{NewTags: []string{"gopher", "tested"}},
		images.UpdateImageProperty{Op: images.AddOp, Name: "hw_disk_bus", Value: "virtio"},
	}).Extract()
	if err != nil || img.Name != "cirros-0.6" || !slices.Contains(img.Tags, "tested") || img.Properties["hw_disk_bus"] != "virtio" {
		t.Fatalf("update: %+v %v", img, err)
	}

	// Share with a member, who accepts and downloads.
	if _, err := images.Get(ctx, guest, ids[0]).Extract(); err == nil {
		t.Fatal("guest sees a shared image before being a member")
	}
	if _, err := members.Create(ctx, owner, ids[0], "guest").Extract(); err != nil {
		t.Fatalf("add member: %v", err)
	}
	m, err := members.Update(ctx, guest, ids[0], "guest", members.UpdateOpts{Status: "accepted"}).Extract()
	if err != nil || m.Status != "accepted" {
		t.Fatalf("accept: %+v %v", m, err)
	}
	page, err := images.List(guest, images.ListOpts{Visibility: images.ImageVisibilityShared}).AllPages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if shared, _ := images.ExtractImages(page); len(shared) != 1 || shared[0].ID != ids[0] {
		t.Fatalf("guest's shared images: %+v", shared)
	}
	rc, err := imagedata.Download(ctx, guest, ids[0]).Extract()
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("downloaded %d bytes, want %d (%v)", len(got), len(data), err)
	}

	// Deactivate (the member may then not download), reactivate, delete.
	deact := owner.ServiceURL("images", ids[0], "actions", "deactivate")
	if _, err := owner.Post(ctx, deact, nil, nil, &gophercloud.RequestOpts{OkCodes: []int{204}}); err != nil {
		t.Fatalf("deactivate: %v", err)
	}
	if _, err := imagedata.Download(ctx, guest, ids[0]).Extract(); err == nil {
		t.Fatal("download of a deactivated image")
	}
	react := owner.ServiceURL("images", ids[0], "actions", "reactivate")
	if _, err := owner.Post(ctx, react, nil, nil, &gophercloud.RequestOpts{OkCodes: []int{204}}); err != nil {
		t.Fatalf("reactivate: %v", err)
	}
	for _, id := range ids {
		if err := images.Delete(ctx, owner, id).ExtractErr(); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	if err := images.Delete(ctx, owner, ids[0]).ExtractErr(); !gophercloud.ResponseCodeIs(err, 404) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := images.Get(ctx, gopherClient(srv.URL, "bad-token"), ids[1]).Extract(); !gophercloud.ResponseCodeIs(err, 401) {
		t.Fatalf("unknown token: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
