"""Bundled search spaces (YAML), installed as mvit_nas.search_spaces."""
