package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
)

// Image statuses, as Glance names them.
const (
	StatusQueued        = "queued"
	StatusSaving        = "saving"
	StatusActive        = "active"
	StatusKilled        = "killed"
	StatusDeleted       = "deleted"
	StatusPendingDelete = "pending_delete"
	StatusDeactivated   = "deactivated"
	StatusUploading     = "uploading"
	StatusImporting     = "importing"
)

// Image is an image record as the Image API v2 shows it. Attributes Glance shows as null
// when unset are pointers. Properties holds the free-form properties, which appear in the
// JSON beside the core attributes.
type Image struct {
	ID              string   `json:"id"`
	Name            *string  `json:"name"`
	Status          string   `json:"status"`
	Visibility      string   `json:"visibility"`
	Protected       bool     `json:"protected"`
	OSHidden        bool     `json:"os_hidden"`
	Owner           *string  `json:"owner"`
	Checksum        *string  `json:"checksum"`
	OSHashAlgo      *string  `json:"os_hash_algo"`
	OSHashValue     *string  `json:"os_hash_value"`
	Size            *int64   `json:"size"`
	VirtualSize     *int64   `json:"virtual_size"`
	MinRAM          int64    `json:"min_ram"`
	MinDisk         int64    `json:"min_disk"`
	DiskFormat      *string  `json:"disk_format"`
	ContainerFormat *string  `json:"container_format"`
	CreatedAt       string   `json:"created_at"`
	UpdatedAt       string   `json:"updated_at"`
	Tags            []string `json:"tags"`
	Self            string   `json:"self"`
	File            string   `json:"file"`
	Schema          string   `json:"schema"`
	// Properties are the free-form properties (strings in Glance's schema, but kept as raw
	// JSON so that an upstream's values pass through unchanged).
	Properties map[string]json.RawMessage `json:"-"`
}

// coreKeys are the attributes that are not free-form properties, including read-only ones
// Glance may add (locations, direct_url, stores).
var coreKeys = map[string]bool{
	"id": true, "name": true, "status": true, "visibility": true, "protected": true,
	"os_hidden": true, "owner": true, "checksum": true, "os_hash_algo": true,
	"os_hash_value": true, "size": true, "virtual_size": true, "min_ram": true,
	"min_disk": true, "disk_format": true, "container_format": true, "created_at": true,
	"updated_at": true, "tags": true, "self": true, "file": true, "schema": true,
}

// IsCoreAttribute reports whether key is one of the image's own attributes rather than a
// free-form property.
func IsCoreAttribute(key string) bool { return coreKeys[key] }

type imageAlias Image

// MarshalJSON writes the core attributes and the properties in one object, properties
// first as Glance does, each group in a stable order.
func (img Image) MarshalJSON() ([]byte, error) {
	core, err := json.Marshal(imageAlias(img))
	if err != nil {
		return nil, err
	}
	if len(img.Properties) == 0 {
		return core, nil
	}
	keys := make([]string, 0, len(img.Properties))
	for k := range img.Properties {
		if !coreKeys[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteByte('{')
	for _, k := range keys {
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		v := img.Properties[k]
		if len(v) == 0 {
			v = json.RawMessage("null")
		}
		b.Write(v)
		b.WriteByte(',')
	}
	b.Write(core[1:])
	return b.Bytes(), nil
}

// UnmarshalJSON reads the core attributes and keeps every other key as a property.
func (img *Image) UnmarshalJSON(data []byte) error {
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return err
	}
	var a imageAlias
	if err := json.Unmarshal(data, &a); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	*img = Image(a)
	img.Properties = nil
	for k, v := range all {
		if !coreKeys[k] {
			if img.Properties == nil {
				img.Properties = map[string]json.RawMessage{}
			}
			img.Properties[k] = v
		}
	}
	return nil
}

// Str returns *p, or "" for nil.
func Str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// Member is an image member: a project an image is shared with.
type Member struct {
	ImageID   string `json:"image_id"`
	MemberID  string `json:"member_id"`
	Status    string `json:"status"` // pending, accepted, rejected
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Schema    string `json:"schema"`
}
