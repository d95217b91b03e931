# Embeds every file under the given directories into a generated C source as
#   const struct chat_asset chat_assets[]; const size_t chat_assets_count;
# (declared in src/core/assets.h), keyed by "<dirname>/<relative path>".
# Re-generated whenever a file is added, removed or changed.
function(chatd_embed_files out_var)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/embedded_assets.c)
  set(files)
  foreach(dir ${ARGN})
    file(GLOB_RECURSE found CONFIGURE_DEPENDS ${dir}/*)
    list(APPEND files ${found})
  endforeach()
  list(SORT files)
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DOUT=${out} "-DDIRS=${ARGN}" -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed_gen.cmake
    DEPENDS ${files} ${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed_gen.cmake
    COMMENT "Embedding assets"
    VERBATIM)
  set(${out_var} ${out} PARENT_SCOPE)
endfunction()
