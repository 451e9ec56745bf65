package config

import (
	_ "embed"
	"fmt"
	"slices"
	"sync"

	"github.com/BurntSushi/toml"
)

//go:generate go run ./catalog/gen -src=${BALISE_CATALOG_SRC} -out=catalog/catalog.toml

//go:embed catalog/catalog.toml
var catalogTOML []byte

// CatalogInfo describes the embedded service catalog.
type CatalogInfo struct {
	// Version identifies the catalog data: the date its sources were read
	// and the number of domains it lists by default ("2026-11-22.530").
	Version string
	// Serial only grows from one catalog to the next (see
	// ServiceCatalog.Serial).
	Serial int64
	// Categories are the categories of the catalog's services.
	Categories []string
	// Canaries are the names blocked with reason "canary" when
	// block_canaries is on.
	Canaries []string
	Services []CatalogService
}

// CatalogService is one service of the embedded catalog.
type CatalogService struct {
	ID       string
	Name     string
	Category string
	// Aliases are other ids rules may use for the service ("x").
	Aliases []string
	// Optional services are listed only when [catalog] enable names them.
	Optional bool
	// Domains is the number of domains listed by default; Extra, Shared
	// and Copyleft count the optional ones (see CatalogSection).
	Domains, Extra, Shared, Copyleft int
}

// catalogData is the schema of catalog/catalog.toml.
type catalogData struct {
	Version string `toml:"version"`
	// Serial only grows from one catalog to the next (see
	// ServiceCatalog.Serial); 0 when the file has none.
	Serial     int64            `toml:"serial"`
	Categories []string         `toml:"categories"`
	Canaries   []string         `toml:"canaries"`
	Services   []catalogService `toml:"service"`
	byID       map[string]int
}

type catalogService struct {
	ID           string   `toml:"id"`
	Optional     bool     `toml:"optional"`
	Name         string   `toml:"name"`
	Category     string   `toml:"category"`
	Aliases      []string `toml:"aliases"`
	Domains      []string `toml:"domains"`
	Exceptions   []string `toml:"exceptions"`
	CNAMETargets []string `toml:"cname_targets"`
	Shared       []string `toml:"shared"`
	Extra        []string `toml:"extra"`
	Copyleft     []string `toml:"copyleft"`
	Sources      []string `toml:"sources"`
}

// embeddedCatalog parses the embedded catalog once. The data is
// immutable; callers must not modify it.
var embeddedCatalog = sync.OnceValue(func() *catalogData {
	var c catalogData
	md, err := toml.Decode(string(catalogTOML), &c)
	if err != nil {
		panic(fmt.Sprintf("config: embedded catalog: %v", err))
	}
	if u := md.Undecoded(); len(u) > 0 {
		panic(fmt.Sprintf("config: embedded catalog: unknown keys %v", u))
	}
	c.index()
	return &c
})

// service returns the catalog service with this id or alias.
func (c *catalogData) service(id string) (*catalogService, bool) {
	i, ok := c.byID[id]
	if !ok {
		return nil, false
	}
	return &c.Services[i], true
}

func (c *catalogData) hasCategory(name string) bool {
	return slices.Contains(c.Categories, name)
}

// Catalog describes the embedded catalog.
func Catalog() CatalogInfo { return embeddedCatalog().info() }

func (c *catalogData) info() CatalogInfo {
	info := CatalogInfo{
		Version:    c.Version,
		Serial:     serialOf(c),
		Categories: slices.Clone(c.Categories),
		Canaries:   slices.Clone(c.Canaries),
	}
	for _, s := range c.Services {
		info.Services = append(info.Services, CatalogService{
			ID: s.ID, Name: s.Name, Category: s.Category, Aliases: slices.Clone(s.Aliases), Optional: s.Optional,
			Domains: len(s.Domains), Extra: len(s.Extra), Shared: len(s.Shared), Copyleft: len(s.Copyleft),
		})
	}
	return info
}
