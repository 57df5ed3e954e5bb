"""A synthetic demo dataset in MagnaTagATune's exact file formats.

The pipeline runs end to end offline on it: the same code reads the demo and the real MTAT. What is
copied from MTAT:

- ``annotations_final.csv`` and ``clip_info_final.csv``: tab-separated, every field double-quoted,
  CRLF line ends, the same columns; clip ids are increasing integers with gaps; ``clip_info`` also
  lists a few segments without audio (empty ``mp3_path``), as MTAT does for 5,519 of its rows.
- mono MP3s under folders ``0``..``f`` named ``<hex>/<artist>-<album>-<track>-<title>-<start>-<end>.mp3``
  with MTAT's name rule and segment grid (0-29, 30-59, 59-88, ...); all clips of an album share one
  folder, so a folder split never cuts a song or an album.
- crowd-style labels: real MTAT tag names, synonyms used inconsistently (each artist's annotators
  prefer one spelling), true tags randomly left out, a few clips without any tag, negative tags.
- broken files: one empty (0 bytes) and one truncated MP3, still listed in the annotations.

The audio really carries its tags, and every tag concept is audible. Each artist has a style
(classical, opera, choral, techno, rock, ambient, indian, pop), each album a variant of it (baroque or
romantic, choir or monks' chant, metal or rock, ...). Instruments and voices come from one shared pool
(piano, guitar, flute, violin, synthesisers, female and male singers ... each heard in several
styles); an artist keeps one line-up per variant, as a band does. Each song draws its tempo (fast and
slow songs also differ in note lengths), key, mode and loudness, and its own mastering (a random
spectral tilt, so that tags are not read off the average spectrum alone).

Instruments are synthesised from note templates: plucked strings (guitar, harpsichord, harp, sitar,
tanpura, bass) by Karplus-Strong, piano by inharmonic additive partials,
bowed strings, flute, organ and synthesisers by wavetables with vibrato, voices (male and female
ranges, solo, opera, choir, chant) by formant filtering of a glottal source, drums and tabla from
tuned noise and sweeps. A song is synthesised continuously and cut into consecutive clips.

Everything derives from the seed: the same seed and parameters give byte-identical files.

The package, in the order the data flows:

- :mod:`~mstagger.demo.styles`: a style's variants as a table of small recipe builders (line-up,
  tempo, key, loudness) and the tag concepts a recipe makes true.
- :mod:`~mstagger.demo.catalogue`: artists, albums, songs, clips, their folders and crowd labels,
  planned without audio.
- :mod:`~mstagger.demo.arrangement`: a song's score, its parts rendered by a table of per-role
  renderers, the room and the master.
- :mod:`~mstagger.demo.instruments`: a table of per-instrument note makers and the cached note
  templates, over :mod:`~mstagger.demo.synthesis` (oscillators, envelopes, Karplus-Strong).
- :mod:`~mstagger.demo.files`: MP3 clips and the two CSVs; :func:`generate_demo`.
- :mod:`~mstagger.demo.randomness`: the seeded draws the modules share.

MTAT's format itself (file names, folders, the folder split, the CSV lines) comes from
:mod:`mstagger.data.mtat`.
"""

from mstagger.demo.arrangement import synthesise_song
from mstagger.demo.catalogue import SPELLINGS, Catalogue, plan_catalogue
from mstagger.demo.files import generate_demo

__all__ = ["SPELLINGS", "Catalogue", "generate_demo", "plan_catalogue", "synthesise_song"]
