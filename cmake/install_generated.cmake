# Run by the install script (see cmake/packaging.cmake) with CMAKE_INSTALL_PREFIX set
# to the prefix being installed to, and VF_* set by the configure step. Writes the
# pkg-config file and the Python package's _installed.py for that prefix, then
# installs them (file(INSTALL) honours DESTDIR and records them in the manifest).
foreach(var VF_LIBDIR VF_INCLUDEDIR VF_PYDIR)
  if(IS_ABSOLUTE "${${var}}")
    set(${var}_ABS "${${var}}")
  else()
    set(${var}_ABS "${CMAKE_INSTALL_PREFIX}/${${var}}")
  endif()
endforeach()

set(VF_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(VF_PC_LIBDIR "${VF_LIBDIR_ABS}")
set(VF_PC_INCLUDEDIR "${VF_INCLUDEDIR_ABS}")
set(gen "${VF_BINARY_DIR}/install-generated")
configure_file("${VF_SOURCE_DIR}/cmake/vramfit.pc.in" "${gen}/vramfit.pc" @ONLY)
file(INSTALL DESTINATION "${VF_LIBDIR_ABS}/pkgconfig" TYPE FILE FILES "${gen}/vramfit.pc")

# The package finds the library relative to itself first (a moved tree still works).
set(pkgdir "${VF_PYDIR_ABS}/vramfit")
file(RELATIVE_PATH rel "${pkgdir}" "${VF_LIBDIR_ABS}/${VF_LIBFILE}")
file(WRITE "${gen}/_installed.py"
  "\"\"\"Written by `cmake --install`: where the installed libvramfit is.\"\"\"\n"
  "LIBRARY = \"${VF_LIBDIR_ABS}/${VF_LIBFILE}\"\n"
  "LIBRARY_RELATIVE = \"${rel}\"\n")
file(INSTALL DESTINATION "${pkgdir}" TYPE FILE FILES "${gen}/_installed.py")
