"""File tools confined to a workspace root (:mod:`.workspace`): view, glob, grep and ls read it
(:mod:`.file_reading`), write and edit change it (:mod:`.file_writing`)."""

from __future__ import annotations

from ..core.tools import Tool
from .file_reading import FileReadingTools
from .file_writing import FileWritingTools


class FileTools(FileReadingTools, FileWritingTools):
    """The six file tools over one workspace."""

    def tools(self) -> list[Tool]:
        return [
            self.view_tool(),
            self.write_tool(),
            self.edit_tool(),
            self.glob_tool(),
            self.grep_tool(),
            self.ls_tool(),
        ]
