package api

import (
	"embed"
	"net/http"
)

// The JSON schemas Glance Zed serves under /v2/schemas/, byte for byte as a real Glance
// (Debian's glance-api 25.1.0, default configuration) answered them: glanceclient builds
// its command-line options and its validation from them, so they must not drift.
//
//go:embed schemas/image.json schemas/images.json schemas/member.json schemas/members.json
var schemaFiles embed.FS

// SchemaNames are the schemas served, by the last element of their path.
var SchemaNames = []string{"image", "images", "member", "members"}

// Schema returns the schema named name ("image", "images", "member", "members").
func Schema(name string) ([]byte, bool) {
	b, err := schemaFiles.ReadFile("schemas/" + name + ".json")
	return b, err == nil
}

// WriteSchema answers GET /v2/schemas/{name} as Glance does: 200 with the schema, or 404.
func WriteSchema(w http.ResponseWriter, r *http.Request, name string) {
	b, ok := Schema(name)
	if !ok {
		WriteError(w, r, http.StatusNotFound, "The resource could not be found.")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// DiskFormats and ContainerFormats are the values Glance Zed's image schema allows (null
// aside), in its order.
var (
	DiskFormats      = []string{"ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"}
	ContainerFormats = []string{"ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"}
)
